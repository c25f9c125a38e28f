"""Runs queries through the Python ADBC Flight SQL driver, the reference client.

Usage: adbc_client.py URI USER TOKEN_FILE < queries.json
queries.json: [{"sql": "...", "params": [..] or null}, ...]
Prints JSON: {"tables": [...], "results": [{"ok", "types", "rows"} or {"ok": false, "error"}]}
"""
import json
import sys

import adbc_driver_flightsql.dbapi as flight_sql


def cell(value):
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def main():
    uri, user, token_file = sys.argv[1:4]
    queries = json.load(sys.stdin)
    with open(token_file) as f:
        token = f.read().strip()
    out = {"tables": [], "results": []}
    with flight_sql.connect(uri, db_kwargs={"username": user, "password": token}) as conn:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        for catalog in objects:
            for schema in catalog["catalog_db_schemas"] or []:
                for table in schema["db_schema_tables"] or []:
                    out["tables"].append(table["table_name"])
        out["tables"].sort()
        for query in queries:
            cur = conn.cursor()
            try:
                cur.execute(query["sql"], query.get("params"))
                table = cur.fetch_arrow_table()
                rows = sorted([cell(v) for v in row.values()] for row in table.to_pylist())
                out["results"].append({"ok": True, "types": [str(f.type) for f in table.schema], "rows": rows})
            except Exception as e:  # the error text is what the test checks
                out["results"].append({"ok": False, "error": str(e)})
            finally:
                cur.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
