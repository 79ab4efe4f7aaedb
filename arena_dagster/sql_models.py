"""A small dbt-like runner: one SELECT per file in dbt_like_sql/, refs read from the Jinja AST.

A model file may start with `--` header lines; `-- group: NAME` sets its asset group (`stage`:
the stage's own group), `-- key: col1, col2` names the columns that identify a row (checked for
uniqueness), `-- stages: sft, dpo, rl` makes one model per training stage (named
`<stage>_<file>`), `-- column NAME: text` describes an output column, and the other header
lines form its description. `{{ ref('table') }}` names an upstream table,
`{{ stage_ref('table') }}` the current stage's copy of one (`<stage>_table`), `{{ stage }}`
the stage, `{{ var('name') }}` a profile setting, and `{{ round }}` the round being built.
Macros live in dbt_like_sql/macros/ and are imported like any Jinja template.
Views over the warehouse (dbt_like_sql/views/, plain SELECTs) are always current and carry
no round; `create_views` (re)creates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import duckdb
import jinja2
from jinja2 import nodes

from arena_dagster.errors import ArenaError
from arena_dagster.paths import resource_dir
from arena_dagster.warehouse import _add_new_columns as add_new_columns
from arena_dagster.warehouse import column_schema, quote_ident, table_exists

SQL_DIR = resource_dir("dbt_like_sql")


class SqlModelError(ValueError):
    pass


@dataclass(frozen=True)
class SqlModel:
    name: str
    path: Path
    sql: str
    refs: tuple[str, ...]
    group: str
    key: tuple[str, ...]
    description: str
    vars: tuple[str, ...] = field(default=())
    stage: str | None = None
    columns: tuple[tuple[str, str], ...] = field(default=())


def _environment(sql_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(sql_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )


def _called_names(tree: nodes.Node, function: str) -> list[str]:
    found: list[str] = []
    for call in tree.find_all(nodes.Call):
        if isinstance(call.node, nodes.Name) and call.node.name == function:
            if len(call.args) != 1 or not isinstance(call.args[0], nodes.Const):
                raise SqlModelError(f"{function}() takes one literal string argument")
            found.append(str(call.args[0].value))
    return found


def _header(sql: str) -> tuple[str, tuple[str, ...], tuple[str, ...], str, tuple[tuple[str, str], ...]]:
    group, key, stages, lines, columns = "", (), (), [], []
    for line in sql.splitlines():
        if not line.startswith("--"):
            break
        text = line[2:].strip()
        if text.startswith("column ") and ":" in text:
            name, description = text[len("column "):].split(":", 1)
            columns.append((name.strip(), description.strip()))
        elif text.startswith("group:"):
            group = text.split(":", 1)[1].strip()
        elif text.startswith("key:"):
            key = tuple(c.strip() for c in text.split(":", 1)[1].split(",") if c.strip())
        elif text.startswith("stages:"):
            stages = tuple(c.strip() for c in text.split(":", 1)[1].split(",") if c.strip())
        else:
            lines.append(text)
    return group, key, stages, " ".join(lines).strip(), tuple(columns)


def load_models(sql_dir: Path = SQL_DIR) -> dict[str, SqlModel]:
    env = _environment(sql_dir)
    models: dict[str, SqlModel] = {}
    for path in sorted(sql_dir.glob("*.sql")):
        sql = path.read_text()
        try:
            tree = env.parse(sql)
        except jinja2.TemplateSyntaxError as exc:
            raise SqlModelError(f"{path.name}: {exc}") from exc
        group, key, stages, description, columns = _header(sql)
        if not group:
            raise SqlModelError(f"{path.name}: missing '-- group: NAME' header")
        refs = list(dict.fromkeys(_called_names(tree, "ref")))
        stage_refs = list(dict.fromkeys(_called_names(tree, "stage_ref")))
        if stage_refs and not stages:
            raise SqlModelError(f"{path.name}: stage_ref() needs a '-- stages: ...' header")
        for stage in stages or (None,):
            name = f"{stage}_{path.stem}" if stage else path.stem
            models[name] = SqlModel(
                name=name,
                path=path,
                sql=sql,
                refs=tuple(refs + [f"{stage}_{r}" for r in stage_refs]),
                group=stage if group == "stage" and stage else group,
                key=key,
                description=f"{description} (stage {stage})" if stage else description,
                vars=tuple(dict.fromkeys(_called_names(tree, "var"))),
                stage=stage,
                columns=columns,
            )
    for model in models.values():
        if model.name in model.refs:
            raise SqlModelError(f"{model.name}: a model cannot ref itself")
    return models


def render(model: SqlModel, *, round_key: int, variables: Mapping[str, Any], sql_dir: Path = SQL_DIR) -> str:
    def var(name: str) -> Any:
        if name not in variables:
            raise SqlModelError(f"{model.name}: var({name!r}) is not set in the profile")
        return variables[name]

    def stage_ref(name: str) -> str:
        return quote_ident(f"{model.stage}_{name}")

    template = _environment(sql_dir).from_string(model.sql)
    return template.render(ref=quote_ident, stage_ref=stage_ref, stage=model.stage, var=var, round=int(round_key))


def create_views(conn: duckdb.DuckDBPyConnection, sql_dir: Path = SQL_DIR) -> list[str]:
    """(Re)create every view in `sql_dir/views`; returns their names."""
    names = []
    for path in sorted((sql_dir / "views").glob("*.sql")):
        select = path.read_text().strip().rstrip(";")
        conn.execute(f"CREATE OR REPLACE VIEW {quote_ident(path.stem)} AS {select}")
        names.append(path.stem)
    return names


@dataclass
class SqlRunResult:
    rows: int
    schema: dict[str, str]
    duplicate_keys: int


def run_model(
    conn: duckdb.DuckDBPyConnection,
    model: SqlModel,
    *,
    round_key: int,
    variables: Mapping[str, Any],
    sql_dir: Path = SQL_DIR,
) -> SqlRunResult:
    """Build one round of the model's table: that round's rows are replaced atomically."""
    missing = [ref for ref in model.refs if not table_exists(conn, ref)]
    if missing:
        raise SqlModelError(f"{model.name}: upstream tables missing: {', '.join(missing)}")
    select = render(model, round_key=round_key, variables=variables, sql_dir=sql_dir).strip().rstrip(";")
    name = quote_ident(model.name)
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(f"CREATE TEMP TABLE _model_out AS {select}")
        columns = [r[0] for r in conn.execute("DESCRIBE _model_out").fetchall()]
        if "round" not in columns:
            raise SqlModelError(f"{model.name}: the SELECT must return a `round` column")
        stray = conn.execute("SELECT count(*) FROM _model_out WHERE round IS DISTINCT FROM ?", [round_key]).fetchone()[0]
        if stray:
            raise SqlModelError(f"{model.name}: {stray} rows are not of round {round_key}")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {name} AS SELECT * FROM _model_out LIMIT 0")
        add_new_columns(conn, model.name, "_model_out")  # a home built by an older version gains the new columns
        conn.execute(f"DELETE FROM {name} WHERE round = ?", [round_key])
        conn.execute(f"INSERT INTO {name} BY NAME SELECT * FROM _model_out")
        rows = conn.execute("SELECT count(*) FROM _model_out").fetchone()[0]
        duplicates = 0
        if model.key:
            cols = ", ".join(quote_ident(c) for c in model.key)
            duplicates = conn.execute(
                f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM _model_out GROUP BY {cols})"
            ).fetchone()[0]
        conn.execute("DROP TABLE _model_out")
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return SqlRunResult(rows=int(rows), schema=column_schema(conn, model.name), duplicate_keys=int(duplicates))


def column_lineage(select: str, schemas: Mapping[str, Mapping[str, str]], columns: list[str]) -> dict[str, list[tuple[str, str]]]:
    """For each output column of a rendered SELECT, the (table, column) pairs it is computed from.

    sqlglot follows the CTEs, joins and macros' expansions; a column it cannot trace (a literal,
    or a construct it does not know) is left out rather than guessed.
    """
    from sqlglot.errors import SqlglotError
    from sqlglot.lineage import lineage

    out: dict[str, list[tuple[str, str]]] = {}
    for column in columns:
        try:
            node = lineage(column, select, schema={t: dict(s) for t, s in schemas.items()}, dialect="duckdb")
        except (SqlglotError, ValueError, KeyError):
            continue
        deps = []
        for leaf in node.walk():
            source = getattr(getattr(leaf, "source", None), "name", None)
            if leaf.downstream or not source or source not in schemas:
                continue
            name = leaf.name.rsplit(".", 1)[-1]
            if name in schemas[source] and (source, name) not in deps:
                deps.append((source, name))
        if deps:
            out[column] = deps
    return out


def model_column_lineage(conn: duckdb.DuckDBPyConnection, model: SqlModel, variables: Mapping[str, Any],
                         round_key: int = 1) -> dict[str, list[tuple[str, str]]]:
    """`column_lineage` of a model's SELECT as rendered for `round_key`, against the warehouse's table schemas."""
    schemas = {ref: column_schema(conn, ref) for ref in model.refs if table_exists(conn, ref)}
    select = render(model, round_key=round_key, variables=variables).strip().rstrip(";")
    return column_lineage(select, schemas, list(column_schema(conn, model.name)))


def trace_column(conn: duckdb.DuckDBPyConnection, wanted: str, variables: Mapping[str, Any],
                 sql_dir: Path = SQL_DIR) -> dict[str, Any]:
    """TABLE.COLUMN's upstream columns, followed through every SQL model down to the tables Python assets write.

    A node is {table, column, model (the SQL file, or None for a table no SQL model builds), sources: [nodes]}.
    """
    table, _, column = wanted.partition(".")
    models = load_models(sql_dir)
    if not table or not column:
        raise ArenaError("a column is named TABLE.COLUMN", wanted, f"e.g. sft_examples.winner_model; SQL models: "
                         f"{', '.join(sorted(models))}")
    if table not in models:
        raise ArenaError("not a table a SQL model builds", table, f"column lineage is traced through the SQL "
                         f"models: {', '.join(sorted(models))}")
    if not table_exists(conn, table):
        raise ArenaError("the table is not in the warehouse yet", table, "materialize it (run a round) first")
    if column not in column_schema(conn, table):
        raise ArenaError(f"not a column of {table}", column, f"its columns: {', '.join(column_schema(conn, table))}")
    lineage_of: dict[str, dict[str, list[tuple[str, str]]]] = {}

    def node(table: str, column: str, path: tuple[str, ...]) -> dict[str, Any]:
        model = models.get(table)
        if model is None or table in path or not table_exists(conn, table):
            return {"table": table, "column": column, "model": None, "sources": []}
        if table not in lineage_of:
            lineage_of[table] = model_column_lineage(conn, model, variables)
        return {"table": table, "column": column, "model": f"{sql_dir.name}/{model.path.name}",
                "sources": [node(t, c, (*path, table)) for t, c in lineage_of[table].get(column, [])]}

    return node(table, column, ())
