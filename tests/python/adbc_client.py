"""Runs queries through the Python ADBC Flight SQL driver, the reference client.

Usage: adbc_client.py URI USER TOKEN_FILE < queries.json
(with CARROW_TLS_ROOT_CERTS=CA.pem for a grpc+tls:// URI)
queries.json: [{"sql": "...", "params": [..] or null, "read_with": "arrow" | "pandas" | "polars",
                "save_to": "path.arrow" (optional: the Arrow table as an IPC file)}, ...]
Prints JSON: {"tables": [...], "results": [{"ok", "types", "rows", "metadata"} or {"ok": false, "error"}]}
`metadata` is the result schema's metadata as the driver gives it (Carrow's
coverage manifest and disclosure report). Statements run in one session, in
order, so a `SET carrow.allow_partial = true` holds for those after it.
"""
import json
import os
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
    db_kwargs = {"username": user, "password": token}
    # For grpc+tls:// URIs: the CA that signed the server's certificate.
    if os.environ.get("CARROW_TLS_ROOT_CERTS"):
        with open(os.environ["CARROW_TLS_ROOT_CERTS"]) as f:
            db_kwargs["adbc.flight.sql.client_option.tls_root_certs"] = f.read()
    with flight_sql.connect(uri, db_kwargs=db_kwargs) as conn:
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
                reader = query.get("read_with", "arrow")
                if reader == "pandas":
                    frame = cur.fetch_df()
                    rows = sorted([cell(v) for v in row] for row in frame.itertuples(index=False))
                    out["results"].append({"ok": True, "types": [str(t) for t in frame.dtypes], "rows": rows})
                    continue
                table = cur.fetch_arrow_table()
                if query.get("save_to"):
                    import pyarrow

                    with pyarrow.ipc.new_file(query["save_to"], table.schema) as writer:
                        writer.write_table(table)
                metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
                if reader == "polars":
                    import polars

                    frame = polars.from_arrow(table)
                    rows = sorted([cell(v) for v in row] for row in frame.iter_rows())
                    out["results"].append({"ok": True, "types": [str(t) for t in frame.dtypes], "rows": rows, "metadata": metadata})
                    continue
                rows = sorted([cell(v) for v in row.values()] for row in table.to_pylist())
                out["results"].append(
                    {"ok": True, "types": [str(f.type) for f in table.schema], "rows": rows, "metadata": metadata}
                )
            except Exception as e:  # the error text is what the test checks
                out["results"].append({"ok": False, "error": str(e)})
            finally:
                cur.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
