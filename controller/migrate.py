"""Bring a database to the newest schema with Alembic."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, func, pool, select

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
# PostgreSQL advisory lock key: controllers starting at once migrate one after the other.
MIGRATE_LOCK = 0x66_74_6D_69  # "ftmi"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str) -> None:
    config = alembic_config(url)
    if not url.startswith("postgresql"):
        command.upgrade(config, "head")  # SQLite: one writer at a time anyway
        log.info("database schema is current")
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(select(func.pg_advisory_lock(MIGRATE_LOCK)))
            connection.commit()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
            connection.execute(select(func.pg_advisory_unlock(MIGRATE_LOCK)))
    finally:
        engine.dispose()
    log.info("database schema is current")
