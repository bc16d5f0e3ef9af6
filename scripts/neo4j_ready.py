"""Wait until Bolt answers, then make sure the generated password is the one in force."""

from __future__ import annotations

import sys
import time

from neo4j import GraphDatabase
from neo4j.exceptions import AuthError, ServiceUnavailable


def main(uri: str, password_file: str, timeout_s: float = 120.0) -> int:
    password = open(password_file).read().strip()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with GraphDatabase.driver(uri, auth=("neo4j", password)) as driver:
                driver.verify_connectivity()
                return 0
        except AuthError:
            try:  # a fresh store still has the default password: replace it
                with GraphDatabase.driver(uri, auth=("neo4j", "neo4j")) as driver:
                    with driver.session(database="system") as session:
                        session.run(
                            "ALTER CURRENT USER SET PASSWORD FROM $old TO $new", old="neo4j", new=password
                        ).consume()
            except (AuthError, ServiceUnavailable):
                time.sleep(1)
        except (ServiceUnavailable, OSError):
            time.sleep(1)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
