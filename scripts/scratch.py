"""Scratch databases for the benchmark, the fuzzer and the tests: start from no tables at all."""

import warnings

from sqlalchemy import MetaData, create_engine
from sqlalchemy.exc import SAWarning

from todo_api import database_uri


def drop_everything(url):
    """Drop every table of a database, the migrations' bookkeeping too."""
    engine = create_engine(database_uri(url))
    metadata = MetaData()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SAWarning)  # SQLite cannot reflect expression indexes; dropping tables drops them
        metadata.reflect(engine)
    metadata.drop_all(engine)
    engine.dispose()
