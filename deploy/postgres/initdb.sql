-- One database per service, created when the compose PostgreSQL starts on an empty volume. (`shop declare`, and every
-- shop process, would also create a missing one; the schema inside each is applied by `shop declare` with Alembic.)
CREATE DATABASE order_service;
CREATE DATABASE payment_service;
CREATE DATABASE notification_service;
CREATE DATABASE user_service;
CREATE DATABASE product_service;
