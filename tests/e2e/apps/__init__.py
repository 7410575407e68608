"""Applications that the end-to-end tests serve with ``tarefa serve --app tests.e2e.apps.<module>:app``."""
