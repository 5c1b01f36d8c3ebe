"""The composition root: the only package that knows every service. CLI, process supervisor, wirings, tools."""
