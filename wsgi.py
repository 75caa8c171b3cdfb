"""The WSGI entry point: `gunicorn wsgi:app`."""

from todo_api import create_app

app = create_app()
