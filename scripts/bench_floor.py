"""The benchmark's floor: a bare Flask JSON route, served the same way as the app."""

from flask import Flask

app = Flask(__name__)


@app.get("/")
def index():
    return {"status": "ok"}


@app.get("/health")
def health():
    return {"status": "ok"}
