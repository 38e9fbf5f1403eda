"""Example firedrill verifier in Python: restored row counts.

- rows.<schema>.<table>: count(*) in the restored database equals the rows the
  backup counted while it was taken.
- min_rows.<schema>.<table>: config key `min_rows.<schema>.<table> = N` fails
  the drill if that table has fewer than N rows, whatever the backup counted
  (a backup of an already-emptied table restores "correctly" too).

Build: scripts/build-python-plugin (componentize-py, world `verifier`).
"""

import wit_world
from componentize_py_types import Err
# Module names are pinned by scripts/build-python-plugin (--import-interface-name).
from wit_world.imports import config, logging, sql
from wit_world.imports.types import CheckResult, CheckStatus, DrillContext

PASS, FAIL = CheckStatus.PASS, CheckStatus.FAIL


def ident(name: str) -> str:
    # Table names come from the backup's catalogue: quote them, never paste them.
    return '"' + name.replace('"', '""') + '"'


def describe(e: sql.Error) -> str:
    if isinstance(e, sql.Error_Query):
        code, message = e.value
        return f"{message} (SQLSTATE {code})"
    if isinstance(e, sql.Error_Timeout):
        return "timed out (raise [limits] deadline or the statement timeout)"
    return f"{type(e).__name__.removeprefix('Error_').lower()}: {e.value}"


def count_rows(schema: str, table: str) -> int:
    """count(*) of one table; raises Err(sql.Error) or ValueError."""
    rows = sql.query(f"SELECT count(*) FROM {ident(schema)}.{ident(table)}", []).rows
    if rows and isinstance(rows[0][0], sql.Value_Int):
        return rows[0][0].value
    raise ValueError(f"unexpected count result {rows!r}")


class WitWorld(wit_world.WitWorld):
    def verify(self, ctx: DrillContext) -> list[CheckResult]:
        out: list[CheckResult] = []
        counts: dict[tuple[str, str], int] = {}

        def counted(schema: str, table: str, name: str) -> int | None:
            # Each table is queried once; an error becomes a failed check naming
            # the table. An exception escaping verify() would trap the component
            # and lose every other result, so nothing is allowed to escape.
            key = (schema, table)
            if key not in counts:
                try:
                    counts[key] = count_rows(schema, table)
                except Err as e:
                    out.append(CheckResult(name, FAIL, f"{schema}.{table}: {describe(e.value)}"))
                    return None
                except Exception as e:
                    out.append(CheckResult(name, FAIL, f"{schema}.{table}: {e}"))
                    return None
            return counts[key]

        for t in ctx.tables:
            s, n = t.table.schema, t.table.name
            name = f"rows.{s}.{n}"
            got = counted(s, n, name)
            if got is None:
                continue
            if got == t.rows:
                out.append(CheckResult(name, PASS, f"{got} rows, as at backup time"))
            else:
                out.append(CheckResult(name, FAIL,
                    f"{got} rows restored, {t.rows} counted at backup time "
                    f"({got - t.rows:+d}): check the dump of {s}.{n}"))

        try:
            settings = config.get_all()
        except Err as e:
            # Without config the row-count checks above still stand.
            logging.log(logging.Level.WARN, "verifier-python", f"config unavailable: {e.value}")
            settings = []
        for key, value in sorted(settings):
            if not key.startswith("min_rows."):
                continue
            name = key
            schema, _, table = key.removeprefix("min_rows.").partition(".")
            try:
                minimum = int(value)
                if not schema or not table:
                    raise ValueError("key must be min_rows.<schema>.<table>")
            except ValueError as e:
                out.append(CheckResult(name, FAIL, f"bad config {key} = {value!r}: {e}"))
                continue
            got = counted(schema, table, name)
            if got is None:
                continue
            status = PASS if got >= minimum else FAIL
            out.append(CheckResult(name, status, f"{schema}.{table} has {got} rows, minimum {minimum}"))

        logging.log(logging.Level.DEBUG, "verifier-python", f"{len(out)} checks on {ctx.database}")
        return out
