"""Static check of every ComfyUI symbol the pack uses against a ComfyUI source tree.

    python scripts/check_comfy_api.py --comfyui PATH [--json OUT] [--skeleton DIR]

Reads the pack and the tree with ``ast`` only (the tree is never imported). Prints one row per symbol and exits 1
when a module, name, keyword or argument the pack relies on is missing from the tree, 0 otherwise.

``--skeleton DIR`` also writes the API skeleton of each host file the check read (``skeleton``): the check gives the
same result on DIR as on the tree, so two releases' skeletons compare with ``diff -r`` and a tree that can only be
read file by file can be checked from skeletons written by hand (docs/hosts.md).
"""
import argparse
import ast
import builtins
import importlib
import json
import os
import sys
from dataclasses import dataclass, field, replace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_TOPLEVEL = frozenset(("comfy", "comfy_extras", "comfy_api", "comfy_execution", "folder_paths", "node_helpers",
                           "server", "nodes", "latent_preview", "execution"))
PACK_DIRS = ("nodes", "samplers", "model_loaders", "distributed", "training", "core", "scripts", "benchmarks")
PACK_ROOT_FILES = ("__init__.py", "worker.py")
CALL = "()"

SAFE_DECORATORS = frozenset(("staticmethod", "classmethod", "abstractmethod", "override", "final", "wraps",
                             "lru_cache", "cache", "no_grad", "inference_mode", "contextmanager",
                             "asynccontextmanager", "deprecated", "abstractclassmethod", "abstractstaticmethod"))
INTROSPECTABLE = frozenset(("builtins", "enum", "abc", "typing", "collections", "numbers", "typing_extensions"))
GUARD_EXCEPTIONS = frozenset(("ImportError", "ModuleNotFoundError", "AttributeError"))
FAILING = ("missing module", "missing name", "unknown keyword", "too many positional", "missing argument",
           "override")
COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def pack_files(repo: str = REPO) -> list:
    """The pack's source files (tests excluded, this script excluded)."""
    me = os.path.abspath(__file__)
    out = []
    for d in PACK_DIRS:
        for base, dirs, files in os.walk(os.path.join(repo, d)):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__" and not x.startswith("."))
            out += [os.path.join(base, f) for f in sorted(files)
                    if f.endswith(".py") and os.path.abspath(os.path.join(base, f)) != me]
    out += [os.path.join(repo, f) for f in PACK_ROOT_FILES if os.path.isfile(os.path.join(repo, f))]
    return out


# ---------------------------------------------------------------------------------------------------------------
# The pack side: which host symbols are used where
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class CallInfo:
    positional: int
    keywords: tuple
    star: bool
    dstar: bool


@dataclass
class Use:
    path: tuple
    file: str
    line: int
    module_parts: int = 0
    via: str = ""
    guarded: bool = False
    call: CallInfo = None
    alts: tuple = ()
    override: ast.arguments = None
    override_kind: str = ""

    @property
    def site(self) -> str:
        return f"{self.file}:{self.line}"


def dotted(path) -> str:
    s = ""
    for p in path:
        s += CALL if p == CALL else ("." if s else "") + p
    return s


def is_str(node) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def is_builtin_call(node, name) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name


def decorator_name(dec) -> str:
    if isinstance(dec, ast.Call):
        dec = dec.func
    if isinstance(dec, ast.Attribute):
        return dec.attr
    return dec.id if isinstance(dec, ast.Name) else ""


class FileUses:
    """The host symbols one pack file uses, scope-aware (imports inside functions, aliases, shadowing)."""

    def __init__(self, path: str, rel: str, pack_root: str):
        self.rel = rel
        self.pack_root = pack_root
        with open(path, encoding="utf-8") as f:
            self.tree = ast.parse(f.read(), path)
        self.parent = {}
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parent[child] = node
        self._bindings = {}
        self._classes = {}
        self.uses = []

    # -- scopes ------------------------------------------------------------------------------------------------
    def scope_for(self, node):
        child, p = node, self.parent.get(node)
        while p is not None:
            if isinstance(p, FUNCTIONS + (ast.ClassDef,)) and child in p.body:
                return p
            if isinstance(p, ast.Lambda) and child is p.body:
                return p
            if isinstance(p, COMPREHENSIONS) or isinstance(p, ast.Module):
                return p
            child, p = p, self.parent.get(p)
        return node

    def outer_scope(self, scope):
        return None if isinstance(scope, ast.Module) else self.scope_for(scope)

    def scope_nodes(self, scope):
        if isinstance(scope, ast.Lambda):
            stack = [scope.body]
        elif isinstance(scope, COMPREHENSIONS):
            stack = [g for g in scope.generators] + [getattr(scope, a) for a in ("elt", "key", "value")
                                                      if hasattr(scope, a)]
        else:
            stack = list(scope.body)
        while stack:
            node = stack.pop()
            yield node
            if isinstance(node, FUNCTIONS + (ast.Lambda,)):
                stack += node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
                stack += getattr(node, "decorator_list", [])
            elif isinstance(node, ast.ClassDef):
                stack += node.decorator_list + node.bases + [k.value for k in node.keywords]
            elif isinstance(node, COMPREHENSIONS):
                stack.append(node.generators[0].iter)
            else:
                stack += list(ast.iter_child_nodes(node))

    def host_module(self, name: str) -> bool:
        """``name`` (dotted) is a ComfyUI module rather than one of the pack's own packages of the same name."""
        parts = name.split(".")
        if parts[0] not in HOST_TOPLEVEL:
            return False
        if len(parts) > 1:
            own = os.path.join(self.pack_root, *parts)
            if os.path.isdir(own) or os.path.isfile(own + ".py"):
                return False
        return True

    def bindings(self, scope) -> dict:
        if scope in self._bindings:
            return self._bindings[scope]
        b = {}

        def add(name, entry):
            b.setdefault(name, []).append(entry)

        if isinstance(scope, FUNCTIONS + (ast.Lambda,)):
            a = scope.args
            for arg in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg]:
                if arg is not None:
                    add(arg.arg, ("shadow",))
        if isinstance(scope, COMPREHENSIONS):
            for g in scope.generators:
                for n in ast.walk(g.target):
                    if isinstance(n, ast.Name):
                        add(n.id, ("shadow",))
        for node in self.scope_nodes(scope):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if self.host_module(a.name):
                        path = tuple(a.name.split(".")) if a.asname else (a.name.split(".")[0],)
                        add(a.asname or a.name.split(".")[0], ("import", path))
                    else:
                        add(a.asname or a.name.split(".")[0], ("shadow",))
            elif isinstance(node, ast.ImportFrom):
                host = node.level == 0 and node.module and self.host_module(node.module)
                for a in node.names:
                    if a.name == "*":
                        continue
                    if host and self.host_module(f"{node.module}.{a.name}"):
                        add(a.asname or a.name, ("import", tuple(node.module.split(".")) + (a.name,)))
                    else:
                        add(a.asname or a.name, ("shadow",))
            elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                p = self.parent.get(node)
                if isinstance(p, (ast.Assign, ast.AnnAssign)) and p.value is not None and \
                        (node in getattr(p, "targets", ()) or getattr(p, "target", None) is node):
                    if isinstance(p.value, ast.Constant) and p.value.value is None:
                        add(node.id, ("neutral",))
                    else:
                        add(node.id, ("alias", p.value, scope))
                else:
                    add(node.id, ("shadow",))
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                for n in node.names:
                    add(n, ("outer",))
            elif isinstance(node, ast.ExceptHandler) and node.name:
                add(node.name, ("shadow",))
            elif isinstance(node, FUNCTIONS + (ast.ClassDef,)) and node is not scope:
                add(node.name, ("shadow",))
        self._bindings[scope] = b
        return b

    def lookup(self, name: str, scope, guard=frozenset()):
        s, first = scope, True
        while s is not None:
            if isinstance(s, ast.ClassDef) and not first:
                s = self.outer_scope(s)
                continue
            entries = self.bindings(s).get(name)
            if entries and not any(e[0] == "outer" for e in entries):
                imports = [e for e in entries if e[0] == "import"]
                if imports:
                    return imports[0][1]
                if any(e[0] == "shadow" for e in entries):
                    return None
                aliases = [e for e in entries if e[0] == "alias"]
                if not aliases or len({ast.dump(e[1]) for e in aliases}) != 1:
                    return None
                key = (name, id(s))
                if key in guard:
                    return None
                found = self.chain_path(aliases[0][1], aliases[0][2], guard | {key})
                return found[0] if found else None
            first = False
            s = self.outer_scope(s)
        return None

    # -- pack classes derived from host classes ------------------------------------------------------------
    def class_info(self, cls: ast.ClassDef):
        if cls in self._classes:
            return self._classes[cls]
        info = {"bases": [], "all_host": False, "own": set(), "self_alias": {}}
        self._classes[cls] = info
        outer = self.scope_for(cls)
        untracked = False
        for b in cls.bases:
            found = self.chain_path(b, outer)
            if found and CALL not in found[0]:
                info["bases"].append(found[0])
            elif not (isinstance(b, ast.Name) and b.id == "object"):
                untracked = True
        info["all_host"] = bool(info["bases"]) and not untracked
        values = {}
        for node in cls.body:
            if isinstance(node, FUNCTIONS + (ast.ClassDef,)):
                info["own"].add(node.name)
            for t in ([node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else
                      getattr(node, "targets", []) if isinstance(node, ast.Assign) else []):
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        info["own"].add(n.id)
        for node in ast.walk(cls):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)) and \
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                info["own"].add(node.attr)
                p = self.parent.get(node)
                if isinstance(p, ast.Assign) and len(p.targets) == 1:
                    values.setdefault(node.attr, []).append((p.value, self.scope_for(p)))
                else:
                    values.setdefault(node.attr, []).append((None, None))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
                info["all_host"] = False
        for attr, vals in values.items():
            real = [(v, s) for v, s in vals if not (isinstance(v, ast.Constant) and v.value is None)]
            if real and all(v is not None for v, _ in real) and len({ast.dump(v) for v, _ in real}) == 1:
                info["self_alias"][attr] = real[0]
        return info

    def method_owner(self, node, name):
        """The pack class whose method binds ``name`` (self/cls) as its first parameter, and that method."""
        s = self.scope_for(node)
        while s is not None and not isinstance(s, ast.Module):
            if isinstance(s, FUNCTIONS):
                outer = self.scope_for(s)
                if isinstance(outer, ast.ClassDef):
                    args = s.args.posonlyargs + s.args.args
                    return (outer, s) if args and args[0].arg == name else (None, None)
            if name in self.bindings(s) and not isinstance(s, ast.ClassDef):
                return None, None
            s = self.outer_scope(s)
        return None, None

    # -- chains ------------------------------------------------------------------------------------------------
    def root_path(self, node, scope, guard=frozenset()):
        """(path, alternatives) when ``node`` starts a chain on a host symbol."""
        if isinstance(node, ast.Name):
            path = self.lookup(node.id, scope, guard)
            return (path, ()) if path else None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args and \
                is_str(node.args[0]) and self.host_module(node.args[0].value):
            f = node.func
            if f.attr == "get" and isinstance(f.value, ast.Attribute) and f.value.attr == "modules" and \
                    isinstance(f.value.value, ast.Name) and f.value.value.id == "sys":
                return tuple(node.args[0].value.split(".")), ()
            if f.attr == "import_module" and isinstance(f.value, ast.Name) and f.value.id == "importlib":
                return tuple(node.args[0].value.split(".")), ()
        if isinstance(node, ast.Subscript) and is_str(node.slice) and self.host_module(node.slice.value) and \
                isinstance(node.value, ast.Attribute) and node.value.attr == "modules" and \
                isinstance(node.value.value, ast.Name) and node.value.value.id == "sys":
            return tuple(node.slice.value.split(".")), ()
        if isinstance(node, ast.Call) and is_builtin_call(node, "super") and not node.args:
            cls, _ = self.method_owner(node, "self")
            if cls is None:
                cls, _ = self.method_owner(node, "cls")
            if cls is not None:
                info = self.class_info(cls)
                if info["all_host"]:
                    paths = [b + (CALL,) for b in info["bases"]]
                    return paths[0], tuple(paths[1:])
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id in ("self", "cls") and isinstance(node.ctx, ast.Load):
            cls, _ = self.method_owner(node, node.value.id)
            if cls is None:
                return None
            info = self.class_info(cls)
            if node.attr in info["self_alias"] and node.value.id == "self":
                value, vscope = info["self_alias"][node.attr]
                found = self.chain_path(value, vscope, guard)
                return (found[0], ()) if found else None
            if info["all_host"] and node.attr not in info["own"]:
                tail = (CALL, node.attr) if node.value.id == "self" else (node.attr,)
                paths = [b + tail for b in info["bases"]]
                return paths[0], tuple(paths[1:])
        return None

    def chain_path(self, expr, scope, guard=frozenset()):
        root = self.root_path(expr, scope, guard)
        if root:
            return root
        if isinstance(expr, ast.Attribute):
            inner = self.chain_path(expr.value, scope, guard)
            return (inner[0] + (expr.attr,), ()) if inner else None
        if is_builtin_call(expr, "getattr") and len(expr.args) >= 2 and is_str(expr.args[1]):
            inner = self.chain_path(expr.args[0], scope, guard)
            return (inner[0] + (expr.args[1].value,), ()) if inner else None
        if isinstance(expr, ast.Call) and not is_builtin_call(expr, "hasattr"):
            inner = self.chain_path(expr.func, scope, guard)
            return (inner[0] + (CALL,), ()) if inner else None
        return None

    def is_root(self, node) -> bool:
        if isinstance(node, ast.Name):
            return isinstance(node.ctx, ast.Load)
        if isinstance(node, ast.Attribute):
            return isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
        return isinstance(node, (ast.Call, ast.Subscript))

    # -- guards ------------------------------------------------------------------------------------------------
    def hasattr_paths(self, expr):
        """Paths ``expr`` tests with hasattr(chain, "name")."""
        out = []
        for n in ast.walk(expr):
            if is_builtin_call(n, "hasattr") and len(n.args) == 2 and is_str(n.args[1]):
                found = self.chain_path(n.args[0], self.scope_for(n))
                if found:
                    out.append(found[0] + (n.args[1].value,))
        return out

    def guarded(self, node, path) -> bool:
        """Inside try/except ImportError|AttributeError, or after/under a hasattr test of the same path."""
        def covers(expr):
            return any(path[:len(p)] == p for p in self.hasattr_paths(expr))

        child, p = node, self.parent.get(node)
        while p is not None:
            if isinstance(p, ast.Try) and child in p.body:
                for h in p.handlers:
                    types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
                    if any(isinstance(t, ast.Name) and t.id in GUARD_EXCEPTIONS for t in types):
                        return True
            if isinstance(p, (ast.If, ast.IfExp, ast.While)) and child is not p.test and covers(p.test):
                return True
            if isinstance(p, ast.BoolOp):
                for v in p.values:
                    if v is child:
                        break
                    if covers(v):
                        return True
            for name in ("body", "orelse", "finalbody"):
                block = getattr(p, name, None)
                if isinstance(block, list) and child in block:
                    for st in block[:block.index(child)]:
                        if isinstance(st, ast.If) and covers(st.test):
                            return True
            if isinstance(p, FUNCTIONS + (ast.ClassDef, ast.Lambda)):
                break
            child, p = p, self.parent.get(p)
        return False

    # -- collection --------------------------------------------------------------------------------------------
    def record(self, node, path, **kw):
        guarded = kw.pop("guarded", False) or self.guarded(node, path)
        self.uses.append(Use(path=path, file=self.rel, line=getattr(node, "lineno", 0), guarded=guarded, **kw))

    def extend(self, node, path, alts):
        guarded = False
        while True:
            p = self.parent.get(node)
            if isinstance(p, ast.Attribute) and p.value is node:
                path, alts, node = path + (p.attr,), tuple(a + (p.attr,) for a in alts), p
                continue
            if (is_builtin_call(p, "getattr") or is_builtin_call(p, "hasattr")) and len(p.args) >= 2 and \
                    p.args[0] is node and is_str(p.args[1]):
                name = p.args[1].value
                path, alts, node = path + (name,), tuple(a + (name,) for a in alts), p
                if p.func.id == "hasattr":
                    self.record(node, path, alts=alts, guarded=True)
                    return
                guarded = guarded or len(p.args) >= 3
                continue
            if isinstance(p, ast.Call) and p.func is node:
                star = any(isinstance(a, ast.Starred) for a in p.args)
                info = CallInfo(positional=sum(not isinstance(a, ast.Starred) for a in p.args),
                                keywords=tuple(k.arg for k in p.keywords if k.arg), star=star,
                                dstar=any(k.arg is None for k in p.keywords))
                self.record(p, path, alts=alts, call=info, guarded=guarded)
                q = self.parent.get(p)
                if isinstance(q, ast.Attribute) and q.value is p:
                    path, alts, node = path + (CALL,), tuple(a + (CALL,) for a in alts), p
                    continue
                return
            self.record(node, path, alts=alts, guarded=guarded)
            return

    def collect(self):
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if self.host_module(a.name):
                        parts = tuple(a.name.split("."))
                        self.record(node, parts, module_parts=len(parts), via="import")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                    self.host_module(node.module):
                mod = tuple(node.module.split("."))
                for a in node.names:
                    if a.name == "*":
                        self.record(node, mod, module_parts=len(mod), via="import")
                    elif self.host_module(f"{node.module}.{a.name}"):
                        self.record(node, mod + (a.name,), module_parts=len(mod), via="import")
            elif isinstance(node, ast.ClassDef):
                self.collect_overrides(node)
            if isinstance(node, (ast.Name, ast.Attribute, ast.Call, ast.Subscript)) and self.is_root(node):
                root = self.root_path(node, self.scope_for(node))
                if root:
                    self.extend(node, root[0], root[1])
        return self.uses

    def collect_overrides(self, cls):
        info = self.class_info(cls)
        if not info["all_host"]:
            return
        for node in cls.body:
            if isinstance(node, FUNCTIONS) and not (node.name.startswith("__") and node.name.endswith("__")):
                decs = {decorator_name(d) for d in node.decorator_list}
                kind = "staticmethod" if "staticmethod" in decs else "classmethod" if "classmethod" in decs else \
                    "property" if decs & {"property", "cached_property"} else "method"
                paths = [b + (node.name,) for b in info["bases"]]
                self.uses.append(Use(path=paths[0], alts=tuple(paths[1:]), file=self.rel, line=node.lineno,
                                     via="override", override=node.args, override_kind=kind))


def collect_uses(files, pack_root: str) -> list:
    uses = []
    for path in files:
        rel = os.path.relpath(path, pack_root) if pack_root else path
        uses += FileUses(path, rel, pack_root).collect()
    return uses


# ---------------------------------------------------------------------------------------------------------------
# The host side: resolving names in the ComfyUI tree
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Ent:
    kind: str                 # module class function value instance external argparse unverifiable missing
    mod: str = ""
    node: object = None
    name: str = ""
    bound: bool = False
    owner: object = None
    extra: dict = field(default_factory=dict)


def missing(why: str) -> Ent:
    return Ent("missing", name=why)


def unverifiable(why: str) -> Ent:
    return Ent("unverifiable", name=why)


class ModInfo:
    def __init__(self, name: str, path: str, tree: ast.Module, is_pkg: bool):
        self.name, self.path, self.tree, self.is_pkg = name, path, tree, is_pkg
        self.defs = {}
        self.stars = []
        self.all_names = None
        self.has_getattr = False
        self.runtime_attrs = set()
        self._collect(tree.body)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and isinstance(node.value,
                                                                                                   ast.Name):
                self.runtime_attrs.add((node.value.id, node.attr))
            elif is_builtin_call(node, "setattr") and len(node.args) >= 2 and isinstance(node.args[0], ast.Name):
                self.runtime_attrs.add((node.args[0].id, node.args[1].value if is_str(node.args[1]) else "*"))

    def _collect(self, body):
        for st in body:
            if isinstance(st, FUNCTIONS + (ast.ClassDef,)):
                self.defs.setdefault(st.name, []).append(st)
                if st.name == "__getattr__":
                    self.has_getattr = True
            elif isinstance(st, ast.Import):
                for a in st.names:
                    self.defs.setdefault(a.asname or a.name.split(".")[0], []).append(st)
            elif isinstance(st, ast.ImportFrom):
                for a in st.names:
                    if a.name == "*":
                        self.stars.append(st)
                    else:
                        self.defs.setdefault(a.asname or a.name, []).append(st)
            elif isinstance(st, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = st.targets if isinstance(st, ast.Assign) else [st.target]
                if isinstance(st, ast.AnnAssign) and st.value is None:
                    continue
                for t in targets:
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name):
                            self.defs.setdefault(n.id, []).append(st)
                if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                    names = self._strings(st.value)
                    if names is not None:
                        if isinstance(st, ast.AugAssign):
                            self.all_names = (self.all_names or set()) | names
                        else:
                            self.all_names = names
            elif isinstance(st, (ast.For, ast.AsyncFor, ast.With, ast.AsyncWith)):
                for t in ([st.target] if isinstance(st, (ast.For, ast.AsyncFor)) else
                          [i.optional_vars for i in st.items if i.optional_vars is not None]):
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name):
                            self.defs.setdefault(n.id, []).append(st)
                self._collect(st.body)
                self._collect(getattr(st, "orelse", []))
            elif isinstance(st, ast.If):
                self._collect(st.body)
                self._collect(st.orelse)
            elif isinstance(st, (ast.Try, getattr(ast, "TryStar", ast.Try))):
                self._collect(st.body)
                for h in st.handlers:
                    self._collect(h.body)
                self._collect(st.orelse)
                self._collect(st.finalbody)
            elif isinstance(st, ast.While):
                self._collect(st.body)

    @staticmethod
    def _strings(node):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)) and all(is_str(e) for e in node.elts):
            return {e.value for e in node.elts}
        return None


def class_defs(cls: ast.ClassDef):
    """Names bound in a class body (through if/try blocks): name -> statements; plus annotation-only names."""
    defs, annotated = {}, set()

    def walk(body):
        for st in body:
            if isinstance(st, FUNCTIONS + (ast.ClassDef,)):
                defs.setdefault(st.name, []).append(st)
            elif isinstance(st, ast.AnnAssign) and st.value is None:
                if isinstance(st.target, ast.Name):
                    annotated.add(st.target.id)
            elif isinstance(st, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for t in (st.targets if isinstance(st, ast.Assign) else [st.target]):
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name):
                            defs.setdefault(n.id, []).append(st)
            elif isinstance(st, (ast.Import, ast.ImportFrom)):
                for a in st.names:
                    defs.setdefault(a.asname or a.name.split(".")[0], []).append(st)
            elif isinstance(st, ast.If):
                walk(st.body)
                walk(st.orelse)
            elif isinstance(st, ast.Try):
                walk(st.body)
                for h in st.handlers:
                    walk(h.body)
                walk(st.orelse)
                walk(st.finalbody)
    walk(cls.body)
    return defs, annotated


def is_dataclass(cls: ast.ClassDef) -> bool:
    return any(decorator_name(d) == "dataclass" for d in cls.decorator_list)


def stdlib_object(dotted_name: str):
    mod, _, attr = dotted_name.rpartition(".")
    if mod not in INTROSPECTABLE:
        return None
    try:
        return getattr(importlib.import_module(mod), attr)
    except Exception:
        return None


class Host:
    """A ComfyUI source tree, read with ast."""

    MAX_DEPTH = 12

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self._mods = {}
        self._inst_attrs = {}
        self.files_read = set()   # paths relative to root

    def module_file(self, name: str):
        base = os.path.join(self.root, *name.split("."))
        if os.path.isfile(base + ".py"):
            return base + ".py", False
        if os.path.isfile(os.path.join(base, "__init__.py")):
            return os.path.join(base, "__init__.py"), True
        if os.path.isdir(base) and any(f.endswith(".py") or os.path.isdir(os.path.join(base, f))
                                       for f in os.listdir(base)):
            return None, True
        return None

    def module(self, name: str):
        if name not in self._mods:
            found = self.module_file(name)
            info = None
            if found and found[0] is None:
                info = ModInfo(name, None, ast.Module(body=[], type_ignores=[]), True)
            elif found:
                try:
                    with open(found[0], encoding="utf-8") as f:
                        info = ModInfo(name, found[0], ast.parse(f.read(), found[0]), found[1])
                    self.files_read.add(os.path.relpath(found[0], self.root))
                except (SyntaxError, UnicodeDecodeError, ValueError):
                    info = None
            self._mods[name] = info
        return self._mods[name]

    def version(self) -> str:
        path = os.path.join(self.root, "comfyui_version.py")
        if os.path.isfile(path):
            self.files_read.add("comfyui_version.py")
            with open(path, encoding="utf-8") as f:
                for st in ast.parse(f.read()).body:
                    if isinstance(st, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__version__"
                                                          for t in st.targets) and is_str(st.value):
                        return st.value.value
        return "unknown"

    # -- modules -----------------------------------------------------------------------------------------------
    def module_ent(self, name: str) -> Ent:
        return Ent("module", mod=name) if self.module(name) else Ent("external", name=name)

    def relative(self, info: ModInfo, level: int, module: str) -> str:
        if level == 0:
            return module or ""
        parts = info.name.split(".")
        if not info.is_pkg:
            parts = parts[:-1]
        parts = parts[:len(parts) - (level - 1)] if level > 1 else parts
        return ".".join(parts + ([module] if module else []))

    def module_attr(self, modname: str, attr: str, depth: int = 0) -> Ent:
        info = self.module(modname)
        if info is None:
            return unverifiable(f"{modname} does not parse")
        if depth > self.MAX_DEPTH:
            return unverifiable("re-export chain too deep")
        cands = info.defs.get(attr)
        if cands:
            return self.best([self.from_def(info, attr, st, depth) for st in cands])
        external_star = None
        for st in info.stars:
            base = self.relative(info, st.level, st.module)
            sinfo = self.module(base)
            if sinfo is None:
                external_star = base
                continue
            if sinfo.all_names is not None and attr not in sinfo.all_names:
                continue
            if sinfo.all_names is None and attr.startswith("_"):
                continue
            found = self.module_attr(base, attr, depth + 1)
            if found.kind != "missing":
                return found
        if self.module_file(f"{modname}.{attr}"):
            return Ent("module", mod=f"{modname}.{attr}")
        if info.has_getattr:
            return unverifiable(f"{modname} has a module __getattr__")
        if external_star:
            return unverifiable(f"{modname} star-imports {external_star}")
        if attr in ("__file__", "__name__", "__path__", "__spec__", "__dict__", "__doc__"):
            return Ent("value", name="module attribute")
        return missing(f"{attr} is not in {modname}")

    @staticmethod
    def best(ents):
        for kinds in (("class", "function", "module"), ("instance", "argparse", "value", "external"),
                      ("unverifiable",)):
            for e in ents:
                if e.kind in kinds:
                    return e
        return ents[0]

    def from_def(self, info: ModInfo, attr: str, st, depth: int, owner=None) -> Ent:
        if isinstance(st, FUNCTIONS):
            return Ent("function", mod=info.name, node=st, name=st.name, owner=owner)
        if isinstance(st, ast.ClassDef):
            return Ent("class", mod=info.name, node=st, name=st.name, owner=owner)
        if isinstance(st, ast.Import):
            for a in st.names:
                if a.asname == attr:
                    return self.module_ent(a.name)
                if not a.asname and a.name.split(".")[0] == attr:
                    return self.module_ent(attr)
        if isinstance(st, ast.ImportFrom):
            base = self.relative(info, st.level, st.module)
            for a in st.names:
                if (a.asname or a.name) == attr:
                    if self.module(base) is None:
                        return Ent("external", name=f"{base}.{a.name}")
                    found = self.module_attr(base, a.name, depth + 1)
                    if found.kind == "missing":
                        return unverifiable(f"{info.name} imports {a.name} from {base}, which lacks it")
                    return found
        if isinstance(st, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and st.value is not None:
            if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name) and \
                    isinstance(st.value, (ast.Name, ast.Attribute)) and owner is None:
                found = self.expr(info, st.value, depth + 1)
                if found.kind not in ("missing", "unverifiable"):
                    return found
            return Ent("value", mod=info.name, node=st.value, name=attr, owner=owner)
        return Ent("value", mod=info.name, name=attr, owner=owner)

    def expr(self, info: ModInfo, node, depth: int = 0) -> Ent:
        """What an expression at module level of ``info`` refers to."""
        if depth > self.MAX_DEPTH:
            return unverifiable("alias chain too deep")
        if isinstance(node, ast.Name):
            found = self.module_attr(info.name, node.id, depth + 1)
            if found.kind == "missing" and hasattr(builtins, node.id):
                return Ent("external", name=f"builtins.{node.id}")
            return found
        if isinstance(node, ast.Attribute):
            return self.attr(self.expr(info, node.value, depth + 1), node.attr, depth + 1)
        if isinstance(node, ast.Subscript):
            return self.expr(info, node.value, depth + 1)
        if isinstance(node, ast.Call):
            return self.call_result(self.expr(info, node.func, depth + 1))
        return unverifiable("expression")

    # -- attributes --------------------------------------------------------------------------------------------
    def attr(self, ent: Ent, name: str, depth: int = 0) -> Ent:
        if ent.kind in ("missing", "unverifiable"):
            return ent
        if ent.kind == "module":
            return self.module_attr(ent.mod, name, depth)
        if ent.kind == "class":
            return self.class_attr(ent, name, depth)
        if ent.kind == "instance":
            return self.instance_attr(ent, name, depth)
        if ent.kind == "argparse":
            return self.argparse_attr(ent, name)
        if ent.kind == "value":
            inferred = self.infer(ent, depth)
            if inferred is not None:
                return self.attr(inferred, name, depth + 1)
            return unverifiable(f"attribute of a runtime value ({ent.name or 'value'})")
        if ent.kind == "external":
            obj = stdlib_object(ent.name)
            if obj is not None:
                return Ent("external", name=f"{ent.name}.{name}") if hasattr(obj, name) else \
                    missing(f"{name} is not in {ent.name}")
            return unverifiable(f"outside the tree ({ent.name})")
        return unverifiable(f"attribute of a {ent.kind}")

    def infer(self, ent: Ent, depth: int):
        node = ent.node
        info = self.module(ent.mod) if ent.mod else None
        if info is None or node is None or ent.owner is not None or depth > self.MAX_DEPTH:
            return None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("parse_args", "parse_known_args"):
            return Ent("argparse", mod=ent.mod, name=ent.name)
        if isinstance(node, ast.Call):
            found = self.call_result(self.expr(info, node.func, depth + 1))
            return found if found.kind == "instance" else None
        return None

    def argparse_attr(self, ent: Ent, name: str) -> Ent:
        info = self.module(ent.mod)
        dests = set()
        for node in ast.walk(info.tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr == "add_argument":
                dest = next((k.value.value for k in node.keywords if k.arg == "dest" and is_str(k.value)), None)
                if dest is None:
                    flags = [a.value for a in node.args if is_str(a)]
                    longs = [f for f in flags if f.startswith("--")]
                    flag = (longs or flags or [""])[0]
                    dest = flag.lstrip("-").replace("-", "_")
                dests.add(dest)
        dests |= {a for n, a in info.runtime_attrs if n == ent.name}
        if not dests:
            return unverifiable("command-line options not found")
        if name in dests:
            return Ent("value", name=f"option {name}")
        return missing(f"no option {name} in {ent.mod}.{ent.name}")

    def bases(self, cls: Ent):
        info = self.module(cls.mod)
        out = []
        for b in cls.node.bases:
            if isinstance(b, ast.Name) and b.id == "object":
                continue
            if cls.owner is not None and isinstance(b, ast.Name):
                earlier = [st for st in class_defs(cls.owner.node)[0].get(b.id, []) if st.lineno < cls.node.lineno]
                if earlier:
                    out.append(self.member(info, cls.owner, b.id, earlier[-1], 0))
                    continue
            found = self.expr(info, b)
            out.append(replace(found, name=found.name if found.kind in ("class", "external") else ast.unparse(b)))
        return out

    def class_attr(self, cls: Ent, name: str, depth: int = 0, seen=None) -> Ent:
        seen = set() if seen is None else seen
        if id(cls.node) in seen or depth > self.MAX_DEPTH:
            return unverifiable("class hierarchy too deep")
        seen.add(id(cls.node))
        info = self.module(cls.mod)
        defs, annotated = class_defs(cls.node)
        if name in defs:
            return self.best([self.member(info, cls, name, st, depth) for st in defs[name]])
        external = []
        for base in self.bases(cls):
            if base.kind == "class":
                found = self.class_attr(base, name, depth + 1, seen)
                if found.kind != "missing":
                    return found
            elif base.kind == "external":
                obj = stdlib_object(base.name)
                if obj is None:
                    external.append(base.name)
                elif hasattr(obj, name):
                    return Ent("external", name=f"{base.name}.{name}", extra={"base": base.name})
            else:
                external.append(base.name or base.kind)
        qual = f"{cls.mod}.{cls.name}"
        if name.startswith("__") and name.endswith("__") and hasattr(object, name):
            return Ent("external", name=f"builtins.object.{name}", extra={"base": "builtins.object"})
        if name in annotated:
            return unverifiable(f"{name} is only annotated in {qual} (set on instances)")
        if external:
            return unverifiable(f"{qual} derives from {', '.join(external)} (outside the tree)")
        decs = [decorator_name(d) for d in cls.node.decorator_list if decorator_name(d) not in ("final",)]
        if decs or any(k.arg == "metaclass" for k in cls.node.keywords):
            return unverifiable(f"{qual} is decorated/has a metaclass ({', '.join(decs) or 'metaclass'})")
        for node in ast.walk(cls.node):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id == "self" and \
                    any(isinstance(t, ast.Attribute) and t.attr == name and isinstance(t.value, ast.Name) and
                        t.value.id == cls.name for t in node.targets):
                return Ent("instance", mod=cls.mod, name=cls.name, extra={"cls": cls})
        if (cls.name, name) in info.runtime_attrs or (cls.name, "*") in info.runtime_attrs:
            return unverifiable(f"{qual}.{name} is set at runtime")
        return missing(f"{name} is not in class {qual}")

    def member(self, info, cls: Ent, name: str, st, depth: int) -> Ent:
        e = self.from_def(info, name, st, depth, owner=cls)
        if e.kind == "value" and isinstance(st, ast.Assign) and isinstance(st.value, (ast.Name, ast.Attribute)):
            local = class_defs(cls.node)[0]
            target = st.value
            if isinstance(target, ast.Name) and target.id in local and target.id != name:
                return self.class_attr(cls, target.id, depth + 1)
            found = self.expr(info, target, depth + 1)
            if found.kind in ("class", "function", "module"):
                return found
        return e

    def instance_attrs(self, cls: Ent, seen=None) -> set:
        key = id(cls.node)
        if key in self._inst_attrs:
            return self._inst_attrs[key]
        seen = set() if seen is None else seen
        if key in seen:
            return set()
        seen.add(key)
        names = set()
        for node in ast.walk(cls.node):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                    isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
        for base in self.bases(cls):
            if base.kind == "class":
                names |= self.instance_attrs(base, seen)
        self._inst_attrs[key] = names
        return names

    def instance_attr(self, inst: Ent, name: str, depth: int = 0) -> Ent:
        cls = inst.extra["cls"]
        found = self.class_attr(cls, name, depth)
        if found.kind == "function":
            decs = {decorator_name(d) for d in found.node.decorator_list}
            if decs & {"property", "cached_property"}:
                return Ent("value", name=f"property {name}")
            return Ent("function", mod=found.mod, node=found.node, name=found.name, owner=found.owner,
                       bound="staticmethod" not in decs)
        if found.kind != "missing":
            return found
        if name in self.instance_attrs(cls):
            return Ent("value", name=f"instance attribute {name}")
        for hook in ("__getattr__", "__setattr__", "__getattribute__"):
            if self.class_attr(cls, hook).kind == "function":
                return unverifiable(f"{cls.mod}.{cls.name} defines {hook}")
        return missing(f"{name} is neither a class nor an instance attribute of {cls.mod}.{cls.name}")

    def call_result(self, ent: Ent) -> Ent:
        if ent.kind == "class":
            return Ent("instance", mod=ent.mod, name=ent.name, extra={"cls": ent})
        if ent.kind in ("missing", "unverifiable"):
            return ent
        return Ent("unverifiable", name=f"result of calling a {ent.kind}", extra={"value": True})

    # -- resolving uses ----------------------------------------------------------------------------------------
    def resolve(self, path, module_parts: int = 0) -> Ent:
        if not self.module_file(path[0]):
            return missing(f"module {path[0]}")
        ent = Ent("module", mod=path[0])
        for i, part in enumerate(path[1:], 1):
            new = self.call_result(ent) if part == CALL else self.attr(ent, part)
            if new.kind == "missing":
                if ent.kind == "module" and i < module_parts:
                    return missing(f"module {'.'.join(path[:i + 1])}")
                return new
            if new.kind == "unverifiable":
                return new
            ent = new
        return ent

    # -- signatures --------------------------------------------------------------------------------------------
    def signature(self, ent: Ent):
        """(ast.arguments, parameters to skip, reason a mismatch is only unverifiable or None) or (None, why)."""
        if ent.kind == "function":
            decs = [decorator_name(d) for d in ent.node.decorator_list]
            skip = 0
            if "classmethod" in decs and ent.owner is not None:
                skip = 1
            elif ent.bound:
                skip = 1
            if decs and ("property" in decs or "cached_property" in decs):
                return None, "property"
            odd = [d for d in decs if d not in SAFE_DECORATORS]
            return ent.node.args, skip, (f"decorated with {', '.join(odd)}" if odd else None)
        if ent.kind == "class":
            defs, _ = class_defs(ent.node)
            decs = [decorator_name(d) for d in ent.node.decorator_list]
            if is_dataclass(ent.node) and "__init__" not in defs:
                return None, "dataclass"
            for hook in ("__init__", "__new__"):
                found = self.class_attr(ent, hook)
                if found.kind == "function":
                    soft = None
                    if decs or any(k.arg == "metaclass" for k in ent.node.keywords):
                        soft = f"class decorated/metaclass ({', '.join(decs) or 'metaclass'})"
                    for base in self.bases(ent):
                        if base.kind == "class" and is_dataclass(base.node):
                            soft = "dataclass base"
                    return found.node.args, 1, soft
                base = found.extra.get("base")
                obj = stdlib_object(base) if found.kind == "external" and base else None
                if isinstance(obj, type) and issubclass(obj, BaseException):
                    return ast.arguments(posonlyargs=[], args=[], vararg=ast.arg("args"), kwonlyargs=[],
                                         kw_defaults=[], kwarg=None, defaults=[]), 0, None
                if found.kind == "external" and base not in ("builtins.object", "abc.ABC"):
                    return None, f"{hook} from {base}"
                if found.kind == "unverifiable":
                    return None, found.name
            return None, "object.__init__"
        if ent.kind == "instance":
            found = self.instance_attr(ent, "__call__")
            if found.kind == "function" and found.node is not None:
                return self.signature(found)
            return None, "instance call"
        return None, f"calling a {ent.kind}"

    def dataclass_fields(self, cls: Ent, seen=None) -> list:
        seen = set() if seen is None else seen
        if id(cls.node) in seen:
            return []
        seen.add(id(cls.node))
        out = []
        for base in reversed(self.bases(cls)):
            if base.kind == "class":
                out += [f for f in self.dataclass_fields(base, seen) if f not in out]
        for st in cls.node.body:
            if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name) and \
                    "ClassVar" not in ast.dump(st.annotation) and st.target.id not in out:
                out.append(st.target.id)
        return out

    def check_call(self, ent: Ent, call: CallInfo):
        """(issues, note): issues are failures; note says why the call could not be checked, if so."""
        sig = self.signature(ent)
        if sig[0] is None:
            if sig[1] == "dataclass":
                fields = self.dataclass_fields(ent)
                unknown = [k for k in call.keywords if k not in fields]
                if call.positional > len(fields) and not call.star:
                    return [], f"dataclass: {call.positional} positional for {len(fields)} fields"
                if unknown:
                    return [], f"dataclass: keyword {', '.join(unknown)} not a field"
                return [], None
            if sig[1] == "object.__init__":
                if call.positional or call.keywords:
                    return ["too many positional (object takes no arguments)"], None
                return [], None
            return [], f"signature not checked ({sig[1]})"
        args, skip, soft = sig
        issues = match_signature(args, skip, call)
        if issues and soft:
            return [], f"{'; '.join(issues)} ({soft})"
        return issues, None


def match_signature(args: ast.arguments, skip: int, call: CallInfo) -> list:
    params = args.posonlyargs + args.args
    n_default_start = len(params) - len(args.defaults)
    posonly = {a.arg for a in args.posonlyargs}
    pos = params[skip:]
    issues = []
    if not call.star and args.vararg is None and call.positional > len(pos):
        issues.append(f"too many positional ({call.positional} > {len(pos)})")
    accepted = {p.arg for p in pos if p.arg not in posonly} | {a.arg for a in args.kwonlyargs}
    if args.kwarg is None:
        issues += [f"unknown keyword {k}" for k in call.keywords if k not in accepted]
    if not call.star and not call.dstar:
        for i, p in enumerate(pos):
            if i + skip < n_default_start and i >= call.positional and p.arg not in call.keywords:
                issues.append(f"missing argument {p.arg}")
        for a, d in zip(args.kwonlyargs, args.kw_defaults):
            if d is None and a.arg not in call.keywords:
                issues.append(f"missing argument {a.arg}")
    return issues


def override_issues(base: ast.arguments, base_skip: int, mine: ast.arguments, my_skip: int) -> list:
    """What a host caller may pass to the base method that the pack's override would not accept."""
    if base.kwarg is not None and base.vararg is not None:
        return []
    issues = []
    bpos = (base.posonlyargs + base.args)[base_skip:]
    mpos = (mine.posonlyargs + mine.args)[my_skip:]
    names = {a.arg for a in mpos} | {a.arg for a in mine.kwonlyargs}
    b_required = len(base.posonlyargs + base.args) - len(base.defaults) - base_skip
    if b_required > len(mpos) and mine.vararg is None:
        issues.append(f"takes {len(mpos)} positional, the base requires {b_required}")
    for i, a in enumerate(bpos):
        if i >= b_required and a.arg not in names and mine.kwarg is None:
            issues.append(f"lacks parameter {a.arg}")
    for a in base.kwonlyargs:
        if a.arg not in names and mine.kwarg is None:
            issues.append(f"lacks keyword {a.arg}")
    if base.kwarg is None:
        base_names = {b.arg for b in base.kwonlyargs + bpos}
        m_required = len(mine.posonlyargs + mine.args) - len(mine.defaults) - my_skip
        for i, a in enumerate(mpos):
            if i < m_required and i >= len(bpos) and base.vararg is None and a.arg not in base_names:
                issues.append(f"requires {a.arg}, which the base does not take")
        for a, d in zip(mine.kwonlyargs, mine.kw_defaults):
            if d is None and a.arg not in base_names:
                issues.append(f"requires keyword {a.arg}, which the base does not take")
    return issues


# ---------------------------------------------------------------------------------------------------------------
# Putting it together
# ---------------------------------------------------------------------------------------------------------------

def status_of(host: Host, use: Use):
    """(status, detail, call issues, call note) for one use."""
    if use.path[-1] == CALL:
        return None
    paths = (use.path,) + tuple(use.alts)
    ent = None
    for p in paths:
        ent = host.resolve(p, use.module_parts)
        if ent.kind != "missing":
            break
    if use.via == "override":
        if ent.kind != "function":
            return None
        base_decs = {decorator_name(d) for d in ent.node.decorator_list}
        base_skip = 0 if "staticmethod" in base_decs else 1
        my_skip = 0 if use.override_kind == "staticmethod" else 1
        if use.override_kind == "property" or base_decs & {"property", "cached_property"}:
            return "ok", "", [], None
        odd = [d for d in base_decs if d not in SAFE_DECORATORS]
        issues = override_issues(ent.node.args, base_skip, use.override, my_skip)
        if issues and odd:
            return "unverifiable", f"base decorated with {', '.join(odd)}: {'; '.join(issues)}", [], None
        return ("override: " + "; ".join(issues), "", [], None) if issues else ("ok", "", [], None)
    if ent.kind == "missing" and CALL in use.path and \
            host.resolve(use.path[:use.path.index(CALL)], use.module_parts).kind == "missing":
        return None
    if ent.kind == "missing":
        status = "missing module" if ent.name.startswith("module ") else "missing name"
        return status, ent.name, [], None
    if ent.kind == "unverifiable":
        if ent.extra.get("value"):
            return None
        return "unverifiable", ent.name, [], None
    if use.call is not None:
        issues, note = host.check_call(ent, use.call)
        return "ok", "", issues, note
    return "ok", "", [], None


def check(pack_files, comfy_root: str, pack_root: str = None) -> dict:
    """Checks the host symbols used by ``pack_files`` against the ComfyUI tree at ``comfy_root``."""
    if pack_root is None:
        pack_root = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in pack_files]) if pack_files \
            else REPO
    host = Host(comfy_root)
    uses = collect_uses(pack_files, pack_root)
    symbols = {}
    for use in uses:
        key = dotted(use.path) + (" (override)" if use.via == "override" else "")
        result = status_of(host, use)
        if result is None:
            continue
        status, detail, issues, note = result
        sym = symbols.setdefault(key, {"symbol": key, "sites": [], "existence": "ok", "detail": "",
                                       "bad_sites": [], "problems": {}, "notes": {}, "calls": []})
        if use.site not in sym["sites"]:
            sym["sites"].append(use.site)
        if status not in ("ok", "unverifiable"):
            sym["bad_sites"].append((use.site, use.guarded))
            if sym["existence"] in ("ok", "unverifiable"):
                sym["existence"], sym["detail"] = status, detail
        elif status == "unverifiable" and sym["existence"] == "ok":
            sym["existence"], sym["detail"] = status, detail
        if use.call is not None:
            sym["calls"].append({"site": use.site, "positional": use.call.positional,
                                 "keywords": list(use.call.keywords), "star": use.call.star,
                                 "dstar": use.call.dstar, "issues": issues, "note": note})
        for issue in issues:
            sym["problems"].setdefault(issue, []).append((use.site, use.guarded))
        if note:
            sym["notes"].setdefault(note, []).append(use.site)

    def site_key(site):
        f, _, line = site.rpartition(":")
        return f, int(line) if line.isdigit() else 0

    rows = []
    for sym in symbols.values():
        sym["sites"].sort(key=site_key)
        statuses, failing, sites = [], False, None
        if sym["existence"] not in ("ok", "unverifiable"):
            bad = sym["bad_sites"]
            guarded = all(g for _, g in bad)
            statuses.append(sym["existence"] + (" (guarded)" if guarded else ""))
            failing = failing or (not guarded and sym["existence"].startswith(FAILING))
            sites = sorted({s for s, _ in bad}, key=site_key)
        for issue, where in sym["problems"].items():
            guarded = all(g for _, g in where)
            statuses.append(issue + (" (guarded)" if guarded else ""))
            failing = failing or not guarded
            sites = sites or sorted({s for s, _ in where}, key=site_key)
        if not statuses:
            statuses.append(sym["existence"])
        if sym["existence"] == "ok" and not sym["problems"] and sym["notes"]:
            statuses = ["ok (signature unverifiable)"]
        row = {"symbol": sym["symbol"], "status": "; ".join(statuses), "failing": failing,
               "detail": sym["detail"] or "; ".join(sym["notes"]),
               "used_at": sym["sites"], "problem_sites": sites or [], "calls": sym["calls"]}
        rows.append(row)
    rows.sort(key=lambda r: (not r["failing"], r["status"].split(" ")[0] == "ok", r["symbol"]))
    counts = {}
    for r in rows:
        first = r["status"].split(";")[0]
        k = next((f for f in FAILING if first.startswith(f)), first.split(" (")[0])
        k += " (guarded)" if first.endswith("(guarded)") else ""
        counts[k] = counts.get(k, 0) + 1
    return {"comfyui": os.path.abspath(comfy_root), "version": host.version(), "pack_files": len(pack_files),
            "symbols": rows, "counts": counts, "failing": sum(r["failing"] for r in rows),
            "host_files": sorted(host.files_read)}


# ---------------------------------------------------------------------------------------------------------------
# Skeletons: a host file cut to what the check reads
# ---------------------------------------------------------------------------------------------------------------

def _stores_in(fn) -> list:
    """What the check reads inside a function body, as statements: attribute stores on a plain name (right side
    None unless it is a bare name), setattr(name, ...), argparse add_argument calls and annotated names."""
    kept = []

    def store(owner: str, attr: str, value) -> ast.stmt:
        rhs = value if isinstance(value, ast.Name) else ast.Constant(None)
        return ast.Assign(targets=[ast.Attribute(ast.Name(owner, ast.Load()), attr, ast.Store())], value=rhs)

    def stored_attr(n) -> bool:
        return isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) and isinstance(n.value, ast.Name)

    for node in ast.walk(fn):
        if node is fn:
            continue
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                kept += [store(n.value.id, n.attr, node.value) for n in ast.walk(target) if stored_attr(n)]
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                kept.append(ast.AnnAssign(target=node.target, annotation=ast.Name("object", ast.Load()),
                                          value=ast.Constant(None), simple=1))
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.With, ast.AsyncWith)):
            targets = [node.target] if isinstance(node, (ast.For, ast.AsyncFor)) else \
                [i.optional_vars for i in node.items if i.optional_vars is not None]
            kept += [store(n.value.id, n.attr, None) for t in targets for n in ast.walk(t) if stored_attr(n)]
        elif is_builtin_call(node, "setattr") and len(node.args) >= 2 and isinstance(node.args[0], ast.Name):
            kept.append(ast.Expr(ast.Call(ast.Name("setattr", ast.Load()),
                                          [node.args[0], node.args[1], ast.Constant(None)], [])))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            kept.append(ast.Expr(node))
    return kept or [ast.Expr(ast.Constant(...))]


def skeleton(source: str) -> str:
    """``source`` with every statement outside functions kept and every function body cut to ``_stores_in``:
    imports, classes, signatures, decorators and module/class assignments stay exact."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, FUNCTIONS):
            node.body = _stores_in(node)
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def write_skeletons(comfy_root: str, files, out_dir: str) -> None:
    for rel in files:
        with open(os.path.join(comfy_root, rel), encoding="utf-8") as f:
            text = skeleton(f.read())
        path = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def table(result: dict) -> str:
    rows = [("symbol", "used at", "status")]
    for r in result["symbols"]:
        sites = r["problem_sites"] or r["used_at"]
        where = ", ".join(sites[:3]) + (f" (+{len(sites) - 3})" if len(sites) > 3 else "")
        status = r["status"] + (f" — {r['detail']}" if r["detail"] and r["status"] != "ok" else "")
        rows.append((r["symbol"], where, status))
    w0 = min(max(len(r[0]) for r in rows), 70)
    w1 = min(max(len(r[1]) for r in rows), 90)
    lines = [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    lines.insert(1, "-" * min(w0 + w1 + 40, 200))
    lines.append("")
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(result["counts"].items()))
    lines.append(f"ComfyUI {result['version']} at {result['comfyui']}: {len(result['symbols'])} symbols from "
                 f"{result['pack_files']} files; {counts}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", required=True, help="a ComfyUI source tree (the folder with nodes.py)")
    parser.add_argument("--json", help="write the full result here")
    parser.add_argument("--pack", default=REPO, help="the pack's root (default: this repository)")
    parser.add_argument("--skeleton", metavar="DIR", help="write the API skeleton of every host file the check read")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.comfyui, "nodes.py")):
        parser.error(f"{args.comfyui} is not a ComfyUI tree (no nodes.py)")
    result = check(pack_files(args.pack), args.comfyui, pack_root=args.pack)
    print(table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    if args.skeleton:
        write_skeletons(args.comfyui, result["host_files"], args.skeleton)
        print(f"skeletons of {len(result['host_files'])} host files in {args.skeleton}")
    return 1 if result["failing"] else 0


if __name__ == "__main__":
    sys.exit(main())
