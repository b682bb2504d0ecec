"""Print the JSON Schema (draft 2020-12) of the wire contract: requests, responses, errors.

The same document is committed as docs/schema.json; a test keeps the two in step.
"""

import json


def add_arguments(parser):
    parser.add_argument("--output", "-o", help="write to this file instead of standard output")


def run(args):
    from leakseg.schema import json_schema

    text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        print(text, end="")
    return 0
