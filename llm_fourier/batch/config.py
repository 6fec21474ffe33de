"""Report configs: a TOML (or YAML) file naming models, tasks, analyses and seeds -> jobs.

Layout (every key but ``jobs`` optional)::

    title = "Fourier features in GPT-2"
    seeds = [0, 1]                         # default seeds of jobs whose command takes --seed
    revisions = ["step1000", "step143000"] # default hub revisions of jobs that load a model

    [models]                               # name -> hub id, local folder or job output
    gpt2 = "gpt2"
    adder = "{jobs.transplant-s0}/fourier" # a path inside another job's output folder

    [tasks]                                # name -> settings merged into a job's settings
    add = { op = "+", max_operand = 260 }

    [[jobs]]
    command = "probe"                      # any registered command ("toy train", ...)
    name = "probe"                         # id prefix (default: the command, dashed)
    models = ["gpt2"]                      # or "*"; sets the "model" setting
    tasks = ["add"]                        # or "*"
    seeds = [0]                            # overrides the top-level seeds
    revisions = ["main"]                   # overrides the top-level revisions
    needs = ["finetune-gpt2-add-s0"]       # extra dependencies (references add their own)
    settings = { batch_size = 16 }         # the command's options, dashes or underscores

Each job expands to models x tasks x revisions x seeds, with the id
``name[-model][-task][-rREVISION][-sSEED]`` (characters other than letters, digits, ``.``,
``_``, ``+`` and ``-`` of a revision become ``_`` in the id; an id that would still not be
one safe file name, e.g. from a model named ``../x``, gets its unsafe characters replaced
and a hash appended: ``output.paths.path_component``). Revisions set the command's
``revision`` setting (a hub branch, tag or commit, e.g. Pythia's ``step1000``); the
top-level list applies to the jobs whose command has that setting and whose settings do not
set it. In settings, ``{model}``, ``{task}``, ``{revision}`` and ``{seed}`` are replaced by
the job's names and ``{jobs.ID}`` by job ID's output folder (resolved at run time; the job
then depends on ID). Any mistake raises a ``UserError`` naming the key and the problem.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from llm_fourier.commands import get_command
from llm_fourier.errors import UserError
from llm_fourier.output.paths import path_component
from llm_fourier.output.reading import read_data

REF = re.compile(r"\{jobs\.([A-Za-z0-9_.+\-]+)\}")
TOP_KEYS = {"title", "description", "seeds", "revisions", "models", "tasks", "jobs"}
JOB_KEYS = {"command", "name", "models", "tasks", "seeds", "revisions", "needs", "settings",
            "model_setting", "seed_setting", "caption"}
ID_CHARS = re.compile(r"[^A-Za-z0-9_.+\-]")


@dataclass(frozen=True)
class Job:
    """One run of one command with fixed settings, into ``OUT/jobs/<id>/``."""

    id: str
    command: str
    settings: dict
    needs: tuple[str, ...] = ()
    model: str | None = None
    task: str | None = None
    seed: int | None = None
    caption: str = ""
    revision: str | None = None

    def settings_hash(self, upstream: Mapping[str, str] | None = None) -> str:
        """sha256 of the command, the unresolved settings and the hashes of its needs."""
        upstream = upstream or {}
        blob = json.dumps({"command": self.command, "settings": self.settings,
                           "needs": {n: upstream.get(n, "") for n in self.needs}},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Report:
    """A parsed config: a title and the jobs in dependency order."""

    title: str
    jobs: list[Job]
    description: str = ""
    source: str = ""

    def job(self, job_id: str) -> Job:
        return next(j for j in self.jobs if j.id == job_id)


def resolve_refs(value, job_dir):
    """Replace ``{jobs.ID}`` in strings (also inside lists) by ``str(job_dir(ID))``."""
    if isinstance(value, str):
        return REF.sub(lambda m: str(job_dir(m.group(1))), value)
    if isinstance(value, list):
        return [resolve_refs(v, job_dir) for v in value]
    return value


def load_config(path: str | Path, model_overrides: Mapping[str, str] | None = None, *,
                trust_remote_code: bool = False) -> Report:
    """Read a ``.toml`` / ``.yaml`` report config (``output.reading``: UTF-8, bounded YAML,
    string keys) and expand it into jobs."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"report config {path} does not exist; pass the path of a .toml file "
                        "or a preset name (see `llm-fourier report --list-presets`).")
    raw = read_data(path, "report config", "json" if path.suffix.lower() == ".json" else
                    "yaml" if path.suffix.lower() in (".yaml", ".yml") else "toml")
    return parse_config(raw if raw is not None else {}, source=str(path),
                        model_overrides=model_overrides, trust_remote_code=trust_remote_code)


def _fail(source: str, key: str, problem: str) -> UserError:
    return UserError(f"{source + ': ' if source else ''}{key}: {problem}.")


def _names(value, table: dict, key: str, source: str) -> list[str]:
    if value == "*":
        return list(table)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(source, key, "must be a list of names or \"*\"")
    if not value:
        raise _fail(source, key, "name at least one (or leave the key out)")
    for v in value:
        if v not in table:
            known = ", ".join(table) or "none defined"
            raise _fail(source, key, f"unknown name {v!r} (known: {known})")
    return value


def _seeds(value, key: str, source: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, int) and not isinstance(s, bool)
                                              for s in value):
        raise _fail(source, key, "must be an integer or a list of integers")
    return value


def _revisions(value, key: str, source: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(r, str) and r.strip() for r in value):
        raise _fail(source, key, "must be a revision name or a list of them (hub branches, "
                    "tags or commits such as \"step1000\")")
    if not value:
        raise _fail(source, key, "name at least one (or leave the key out)")
    if len(set(value)) < len(value):
        raise _fail(source, key, f"names a revision twice ({', '.join(value)})")
    return value


def _substitute(value, names: dict[str, str]):
    if isinstance(value, str):
        for k, v in names.items():
            value = value.replace("{" + k + "}", v)
        return value
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    return value


def _refs(value) -> list[str]:
    if isinstance(value, str):
        return REF.findall(value)
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def parse_config(raw: dict, source: str = "",
                 model_overrides: Mapping[str, str] | None = None, *,
                 trust_remote_code: bool = False) -> Report:
    """Validate a config dictionary (as read from TOML/YAML) and expand it into jobs. A job
    whose settings ask for ``trust_remote_code`` is refused unless ``trust_remote_code``
    (the report's own ``--trust-remote-code``): a shared config never runs code by itself."""
    if not isinstance(raw, dict):
        raise _fail(source, "(top level)", "must be a table of keys")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise _fail(source, unknown[0], f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    models = raw.get("models", {})
    tasks = raw.get("tasks", {})
    if not isinstance(models, dict) or not all(isinstance(v, str) for v in models.values()):
        raise _fail(source, "models", "must map names to model ids or folders (strings)")
    models = dict(models)  # the --model overrides below must not change ``raw``
    for name, path in (model_overrides or {}).items():
        if name not in models:
            raise _fail(source, f"models.{name}", f"--model override names no model "
                        f"(known: {', '.join(models) or 'none'})")
        models[name] = path
    if not isinstance(tasks, dict) or not all(isinstance(v, dict) for v in tasks.values()):
        raise _fail(source, "tasks", "must map names to tables of task settings")
    top_seeds = _seeds(raw.get("seeds", [0]), "seeds", source)
    top_revisions = _revisions(raw["revisions"], "revisions", source) \
        if "revisions" in raw else []
    entries = raw.get("jobs")
    if not isinstance(entries, list) or not entries:
        raise _fail(source, "jobs", "give at least one [[jobs]] table with a command")

    jobs = [job for i, entry in enumerate(entries) for job in
            _expand(entry, f"jobs[{i}]", models, tasks, top_seeds, top_revisions, source)]
    for j in jobs:
        if j.settings.get("trust_remote_code") and not trust_remote_code:
            raise UserError(f"{source + ': ' if source else ''}job {j.id} sets "
                            "trust_remote_code, which runs Python code from its model's "
                            "folder; rerun with --trust-remote-code on the report's command "
                            "line if you trust that code.")
    ids = [j.id for j in jobs]
    for j in jobs:
        if ids.count(j.id) > 1:
            raise _fail(source, "jobs", f"two jobs have the id {j.id!r}; give one a distinct name")
    for j in jobs:
        for need in j.needs:
            if need not in ids:
                raise _fail(source, f"job {j.id}", f"refers to unknown job {need!r} "
                            f"(known: {', '.join(ids)})")
    return Report(title=str(raw.get("title", "Fourier features report")),
                  description=str(raw.get("description", "")), jobs=_ordered(jobs, source),
                  source=source)


def _expand(entry, key: str, models: dict, tasks: dict, top_seeds: list[int],
            top_revisions: list[str], source: str) -> list[Job]:
    if not isinstance(entry, dict):
        raise _fail(source, key, "must be a table with at least `command`")
    unknown = sorted(set(entry) - JOB_KEYS)
    if unknown:
        raise _fail(source, f"{key}.{unknown[0]}",
                    f"unknown key (known: {', '.join(sorted(JOB_KEYS))})")
    if not isinstance(entry.get("command"), str):
        raise _fail(source, f"{key}.command", "missing; name a command such as \"probe\"")
    try:
        command = get_command(entry["command"])
    except UserError as err:
        raise _fail(source, f"{key}.command", str(err).rstrip(".")) from err
    options = set(command.Settings.option_names())
    name = entry.get("name", command.name.replace(" ", "-"))
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.+\-]+", name):
        raise _fail(source, f"{key}.name", "use letters, digits, '.', '_', '+' or '-'")
    settings = entry.get("settings", {})
    if not isinstance(settings, dict):
        raise _fail(source, f"{key}.settings", "must be a table of the command's options")
    settings = {k.replace("-", "_"): v for k, v in settings.items()}
    for k in settings:
        if k not in options:
            raise _fail(source, f"{key}.settings.{k}", f"the command has no option {k!r} "
                        f"(known: {', '.join(sorted(options))})")

    model_setting = entry.get("model_setting", "model")
    seed_setting = entry.get("seed_setting", "seed")
    model_names = _names(entry["models"], models, f"{key}.models", source) \
        if "models" in entry else [None]
    if model_names != [None] and model_setting not in options:
        raise _fail(source, f"{key}.models", f"command {command.name!r} has no option "
                    f"{model_setting!r}; set model_setting to the option that takes a model")
    task_names = _names(entry["tasks"], tasks, f"{key}.tasks", source) \
        if "tasks" in entry else [None]
    if "seeds" in entry:
        seeds: list = _seeds(entry["seeds"], f"{key}.seeds", source)
        if seed_setting not in options:
            raise _fail(source, f"{key}.seeds", f"command {command.name!r} has no option "
                        f"{seed_setting!r}")
    else:
        seeds = top_seeds if seed_setting in options and seed_setting not in settings else [None]
    if "revisions" in entry:
        revisions: list = _revisions(entry["revisions"], f"{key}.revisions", source)
        if "revision" not in options:
            raise _fail(source, f"{key}.revisions", f"command {command.name!r} has no option "
                        "'revision'")
        if "revision" in settings:
            raise _fail(source, f"{key}.revisions", "the job's settings set a revision too; "
                        "keep one of them")
    else:
        revisions = top_revisions if top_revisions and "revision" in options \
            and "revision" not in settings else [None]
    needs = entry.get("needs", [])
    if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
        raise _fail(source, f"{key}.needs", "must be a list of job ids")

    jobs = []
    for model, task, revision, seed in itertools.product(model_names, task_names, revisions, seeds):
        names = {"model": model or "", "task": task or "", "revision": revision or "",
                 "seed": "" if seed is None else str(seed)}
        s = {k: _substitute(v, names) for k, v in settings.items()}
        if task is not None:
            for k, v in tasks[task].items():
                k = k.replace("-", "_")
                if k not in options:
                    raise _fail(source, f"tasks.{task}.{k}", f"command "
                                f"{command.name!r} has no option {k!r}")
                s[k] = v
        if model is not None:
            s[model_setting] = models[model]
        if revision is not None:
            s["revision"] = revision
        if seed is not None:  # a list option (``--seeds 0 1``) gets [seed]
            s[seed_setting] = [seed] if command.Settings.is_list(seed_setting) \
                else seed
        parts = [name] + [x for x in (model, task) if x is not None]
        parts += [] if revision is None else [f"r{ID_CHARS.sub('_', revision)}"]
        parts += [] if seed is None else [f"s{seed}"]
        refs = [r for v in s.values() for r in _refs(v)]
        deps = tuple(dict.fromkeys([_substitute(n, names) for n in needs] + refs))
        # one safe path component, the same for the same parts, distinct for distinct ones
        job_id = path_component("-".join(parts))
        try:  # the command's own checks: types, ranges, choices, consistency
            s = command.Settings.convert(s)
            command.Settings.from_dict({**s, "out": "(job folder)"})
        except UserError as err:
            raise UserError(f"{source + ': ' if source else ''}job {job_id}: "
                            f"{err}") from None
        jobs.append(Job(id=job_id, command=command.name, settings=s,
                        needs=deps, model=model, task=task, seed=seed,
                        caption=str(entry.get("caption", "")), revision=revision))
    return jobs


def _ordered(jobs: list[Job], source: str) -> list[Job]:
    """Config order, except that every job comes after the jobs it needs."""
    by_id = {j.id: j for j in jobs}
    done: dict[str, None] = {}
    visiting: set[str] = set()

    def visit(job: Job) -> None:
        if job.id in done:
            return
        if job.id in visiting:
            raise _fail(source, f"job {job.id}", "is part of a dependency cycle")
        visiting.add(job.id)
        for need in job.needs:
            visit(by_id[need])
        visiting.discard(job.id)
        done[job.id] = None

    for job in jobs:
        visit(job)
    return [by_id[i] for i in done]
