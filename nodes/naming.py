"""Node identity: ids are workflow identity (never rename once published); categories sit under one root."""
ID_PREFIX = "UniCascade"
CATEGORY_ROOT = "UniCascade"


def node_id(name: str) -> str:
    return f"{ID_PREFIX}{name}"


def category(sub: str) -> str:
    return f"{CATEGORY_ROOT}/{sub}"
