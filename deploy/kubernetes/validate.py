#!/usr/bin/python3
"""Checks Kubernetes manifests against the API's schema, offline.

Debian has no kubeconform or kubeval, and `kubectl --dry-run` needs a cluster. Its
python3-kubernetes package carries the API's models, generated from the Kubernetes OpenAPI
specification (22.6: Kubernetes 1.22): for each object a field -> type map (`openapi_types`,
`attribute_map`), and setters that refuse a missing required field. This walks each document
through them: an unknown field (a typo such as `hostPid`), a value of the wrong type (an
unquoted `true` annotation) or a missing required field is an error, with its path.
Not checked: the API server's semantic validation (label selectors matching, names' syntax).

Usage: validate.py FILE...  (or `-` for standard input); exit status 1 on any error.
"""

import sys

import yaml
from kubernetes import client

# The kinds the manifests here use: (apiVersion, kind) -> model.
KINDS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
}

# OpenAPI primitive types as the models name them. IntOrString and Quantity are `object`/`str`.
PRIMITIVES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}


def check(value, type_name, path, errors):
    if type_name.startswith("list["):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {value!r}")
            return
        for index, item in enumerate(value):
            check(item, type_name[5:-1], f"{path}[{index}]", errors)
    elif type_name.startswith("dict("):
        inner = type_name[type_name.index(",") + 1 : -1].strip()
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map, got {value!r}")
            return
        for key, item in value.items():
            check(item, inner, f"{path}.{key}", errors)
    elif type_name in PRIMITIVES:
        expected = PRIMITIVES[type_name]
        # YAML's true is a bool, and bool is an int in Python: refuse it where an int belongs.
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
            errors.append(f"{path}: expected {type_name}, got {value!r}")
    elif type_name in ("object", "datetime", "date"):
        pass
    else:
        check_model(value, type_name, path, errors)


def check_model(value, model_name, path, errors):
    model = getattr(client, model_name)
    if not isinstance(value, dict):
        errors.append(f"{path}: expected a {model_name} object, got {value!r}")
        return
    fields = {json: attribute for attribute, json in model.attribute_map.items()}
    present = {}
    for key, item in value.items():
        attribute = fields.get(key)
        if attribute is None:
            errors.append(f"{path}.{key}: not a field of {model_name}")
            continue
        present[attribute] = item
        check(item, model.openapi_types[attribute], f"{path}.{key}", errors)
    try:
        # The setters refuse None for required fields (client-side validation).
        model(**present)
    except ValueError as error:
        errors.append(f"{path}: {error}")


def main(paths):
    errors = []
    documents = 0
    for path in paths:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
        for index, document in enumerate(yaml.safe_load_all(text)):
            if document is None:
                continue
            documents += 1
            where = f"{path}#{index}"
            model = KINDS.get((document.get("apiVersion"), document.get("kind")))
            if model is None:
                errors.append(
                    f"{where}: unknown kind {document.get('apiVersion')}/{document.get('kind')}"
                )
                continue
            check_model(document, model, f"{where} {document['kind']}", errors)
    for error in errors:
        print(error, file=sys.stderr)
    if errors:
        return 1
    print(f"{documents} documents valid (Kubernetes API models of python3-kubernetes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
