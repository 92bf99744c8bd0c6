"""Validates JSON payloads against a JSON Schema (draft-07) with the reference Python implementation.

Reads `{"schema": ..., "payloads": [...]}` on stdin and prints
`{"schema_error": null | "...", "payloads": [{"errors": [{"path": "/a/b", "message": "..."}]}]}`:
the schema is checked against the draft-07 metaschema first, then each payload (with format checks).
"""

import json
import sys

from jsonschema import Draft7Validator
from jsonschema.exceptions import SchemaError


def main():
    request = json.load(sys.stdin)
    schema = request["schema"]
    try:
        Draft7Validator.check_schema(schema)
    except SchemaError as error:
        json.dump({"schema_error": error.message, "payloads": []}, sys.stdout)
        return
    validator = Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)
    results = []
    for payload in request["payloads"]:
        errors = sorted(validator.iter_errors(payload), key=lambda e: list(e.path))
        results.append({
            "errors": [
                {"path": "/" + "/".join(str(p) for p in e.path), "message": e.message}
                for e in errors
            ]
        })
    json.dump({"schema_error": None, "payloads": results}, sys.stdout)


if __name__ == "__main__":
    main()
