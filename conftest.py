"""Root conftest: the project's own tests drive the plugin from outside with pytester."""

pytest_plugins = ["pytester"]
