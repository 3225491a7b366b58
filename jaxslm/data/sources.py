"""Text corpora for pretraining: synthetic problems, local files, Hugging Face datasets.

Every source is read through one function, :func:`iter_texts`, driven by the
``data`` node of the run config (an ``ml_collections.ConfigDict``):

  source: str            "synthetic" | "files" | "hf".  A non-empty ``path`` with
                         source "synthetic" means "files", so
                         ``--config.data.path=...`` points any config at local text.
  path: str              files: a glob or comma-separated globs ("a/*.jsonl,b/**/*.txt").
                         Supported: .txt (the whole file is ONE document), .jsonl
                         (one JSON object per line, text in ``text_field``), .parquet
                         (column ``text_field``); each may also end in .gz (not
                         parquet). A directory means every supported file below it.
  text_field: str        jsonl / parquet / hf column holding the text.
  hf_name: str           ``datasets`` name on the hub, or a local directory or a
                         local data file (.jsonl/.json/.parquet/.csv/.txt).
  hf_config: str         dataset config name, "" for none.
  hf_split: str          split to read ("train").
  hf_revision: str       hub revision ("" = default; a script-only repository is
                         retried on "refs/convert/parquet", its Parquet export).
  streaming: bool        stream from the hub instead of downloading first.
  max_documents: int     0 = all; otherwise stop after this many documents.
  synthetic_documents: int, synthetic_seed: int, synthetic_max_steps: int
                         arguments of ``jaxslm.data.synthetic.iter_documents``.

Local files are read strictly (`jaxslm.data.jsonl`): bytes that are not UTF-8,
a line that is not JSON, a damaged .gz or parquet file, a path that is a
symbolic link loop are each a UserError naming the file and line, never
replaced or skipped. Documents that are empty or whitespace-only are skipped (they would add a lone
EOS token and nothing to learn). Order is deterministic: globs are expanded and
sorted, files are read in that order, rows in file order.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import itertools
import os
from typing import Any, Iterator
from jaxslm import file_checks
from jaxslm.data import jsonl
from jaxslm.errors import ResourceUnavailable, UserError

SOURCES = ("synthetic", "files", "hf")
TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
PARQUET_REVISION = "refs/convert/parquet"
_HF_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet",
                ".csv": "csv", ".txt": "text"}


def resolve_source(data_cfg) -> str:
  """The effective source: a non-empty ``path`` means local files, whatever the
  config's ``source`` ("synthetic" or "hf"), so ``--config.data.path=...``
  points any config at local files."""
  source = str(data_cfg.source)
  if source not in SOURCES:
    raise UserError(f"data.source={source!r} is not one of {SOURCES}; set "
                     f"--config.data.source=synthetic|files|hf.")
  if data_cfg.path:
    return "files"
  if source == "files" and not data_cfg.path:
    raise UserError("data.source='files' needs data.path: pass "
                     "--config.data.path='/data/*.jsonl' (a glob or comma-separated globs).")
  return source


def iter_texts(data_cfg) -> Iterator[str]:
  """Yields the documents of the configured source, in a deterministic order."""
  max_documents = int(data_cfg.max_documents)
  if max_documents < 0:
    raise UserError(f"data.max_documents={max_documents} must be >= 0 (0 means all).")
  source = resolve_source(data_cfg)
  if source == "files":
    texts = _iter_files(expand_paths(data_cfg.path), data_cfg.text_field)
  elif source == "hf":
    texts = _iter_hf(data_cfg)
  else:
    texts = _iter_synthetic(data_cfg)
  texts = (t for t in texts if t and not t.isspace())
  if max_documents:
    texts = itertools.islice(texts, max_documents)
  return texts


def describe_source(data_cfg) -> str:
  """A one-line human-readable name of the corpus, for logs and errors."""
  source = resolve_source(data_cfg)
  if source == "files":
    desc = f"files {data_cfg.path!r} (field {data_cfg.text_field!r} for jsonl/parquet)"
  elif source == "hf":
    config = f", config {data_cfg.hf_config!r}" if data_cfg.hf_config else ""
    desc = (f"Hugging Face dataset {data_cfg.hf_name!r}{config}, split "
            f"{data_cfg.hf_split!r}, field {data_cfg.text_field!r}")
  else:
    desc = (f"synthetic problems (seed {data_cfg.synthetic_seed}, "
            f"{data_cfg.synthetic_documents} documents, max_steps {data_cfg.synthetic_max_steps})")
  if data_cfg.max_documents:
    desc += f", first {data_cfg.max_documents} documents"
  return desc


def source_key(data_cfg) -> dict[str, Any]:
  """The settings that identify the corpus's content (JSON-serializable, for cache keys).

  Local files are identified by absolute path, size and mtime, so editing a file
  invalidates caches built from it. The synthetic source includes a hash of the
  generator's source code, so changing the generator does too.
  """
  source = resolve_source(data_cfg)
  key: dict[str, Any] = {"source": source, "max_documents": int(data_cfg.max_documents)}
  if source == "files":
    key.update(text_field=data_cfg.text_field, files=_file_stats(expand_paths(data_cfg.path)))
  elif source == "hf":
    key.update(hf_name=data_cfg.hf_name, hf_config=data_cfg.hf_config,
               hf_split=data_cfg.hf_split, text_field=data_cfg.text_field,
               hf_revision=data_cfg.get("hf_revision", ""))
    local = os.path.expanduser(data_cfg.hf_name)
    if os.path.exists(local):
      key["files"] = _file_stats(_walk(local) if os.path.isdir(local) else [local])
  else:
    spec = importlib.util.find_spec("jaxslm.data.synthetic")
    code = b""
    if spec is not None and spec.origin and os.path.exists(spec.origin):
      with open(spec.origin, "rb") as f:
        code = f.read()
    key.update(synthetic_seed=int(data_cfg.synthetic_seed),
               synthetic_documents=int(data_cfg.synthetic_documents),
               synthetic_max_steps=int(data_cfg.synthetic_max_steps),
               **({"synthetic_format": fmt} if (fmt := data_cfg.get("synthetic_format", "gsm8k"))
                  != "gsm8k" else {}),
               generator_sha256=hashlib.sha256(code).hexdigest())
  return key


# ---------------------------------------------------------------- local files


def expand_paths(path_spec: str) -> list[str]:
  """Expands a glob or comma-separated globs into a sorted, de-duplicated file list.

  Each glob's matches are sorted; globs keep the order they were given in.
  Raises FileNotFoundError naming any glob that matches nothing, and ValueError
  naming any file with an unsupported extension.
  """
  patterns = [p.strip() for p in str(path_spec).split(",") if p.strip()]
  if not patterns:
    raise UserError(f"data.path={path_spec!r} names no files; pass a glob such as "
                     f"--config.data.path='/data/*.jsonl'.")
  files: list[str] = []
  for pattern in patterns:
    expanded = os.path.expanduser(pattern)
    matches = sorted(glob.glob(expanded, recursive=True))
    if not matches:
      raise FileNotFoundError(
          f"data.path glob {pattern!r} matches no files (cwd {os.getcwd()!r}); check the "
          f"path, or quote the glob so the shell does not expand it.")
    for match in matches:
      files.extend(_walk(match) if os.path.isdir(match) else [match])
  seen: set[str] = set()
  unique = [f for f in files if not (f in seen or seen.add(f))]
  for f in unique:
    _file_kind(f)  # fail early, before any reading, on an unsupported file
  return unique


def _walk(directory: str) -> list[str]:
  """Every supported file below ``directory``, sorted."""
  found = []
  for root, _, names in os.walk(directory):
    found += [os.path.join(root, n) for n in names if _file_kind(n, strict=False)]
  if not found:
    raise FileNotFoundError(f"directory {directory!r} holds no .txt, .jsonl or .parquet files.")
  return sorted(found)


def _file_kind(path: str, strict: bool = True) -> str | None:
  name = path.lower()
  name = name[:-3] if name.endswith(".gz") else name
  for kind, suffixes in (("txt", TEXT_SUFFIXES), ("jsonl", JSONL_SUFFIXES),
                         ("parquet", PARQUET_SUFFIXES)):
    if name.endswith(suffixes) and not (kind == "parquet" and path.lower().endswith(".gz")):
      return kind
  if strict:
    raise UserError(
        f"unsupported file {path!r}: expected .txt, .jsonl or .parquet (.txt/.jsonl may be "
        f"gzipped); narrow data.path to those files or convert this one.")
  return None


def _file_stats(files: list[str]) -> list[dict[str, Any]]:
  stats = []
  for f in files:
    file_checks.check_file(f, "data file")   # a symbolic link loop, a dangling link, ...
    st = os.stat(f)
    stats.append({"path": os.path.abspath(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
  return stats


def _iter_files(files: list[str], text_field: str) -> Iterator[str]:
  for path in files:
    kind = _file_kind(path)
    if kind == "txt":
      yield jsonl.read_text(path)
    elif kind == "jsonl":
      yield from _iter_jsonl(path, text_field)
    else:
      yield from _iter_parquet(path, text_field)


def _iter_jsonl(path: str, text_field: str) -> Iterator[str]:
  for lineno, line in jsonl.lines(path):
    if not line.strip():
      continue
    where = f"{path}:{lineno}"
    row = jsonl.parse(line, where)
    if not isinstance(row, dict):
      raise UserError(f"{where} holds a {type(row).__name__}, expected a JSON "
                       f"object with a {text_field!r} field.")
    yield _text_of(row, text_field, where)


def _iter_parquet(path: str, text_field: str) -> Iterator[str]:
  import pyarrow as pa
  import pyarrow.parquet as pq

  file_checks.check_file(path, "data file")
  try:
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
  except (pa.ArrowException, OSError) as e:
    raise UserError(f"parquet file {path!r} cannot be read ({file_checks.brief(e)}); it is "
                     "damaged, cut short or not parquet. Restore or download it again.") from None
  if text_field not in names:
    raise UserError(f"parquet file {path!r} has no column {text_field!r}; its columns are "
                     f"{names}. Set --config.data.text_field to one of them.")
  batches = pf.iter_batches(batch_size=1024, columns=[text_field])
  while True:
    try:
      batch = next(batches, None)
    except (pa.ArrowException, OSError) as e:
      raise UserError(f"parquet file {path!r} is damaged past its header ({file_checks.brief(e)}); "
                       "restore or download it again.") from None
    if batch is None:
      return
    for text in batch.column(0).to_pylist():
      if text is not None:
        yield _check_str(text, text_field, path)


def _text_of(row: dict, text_field: str, where: str) -> str:
  try:
    text = row[text_field]
  except KeyError:
    raise UserError(f"{where} has no field {text_field!r}; its keys are {sorted(row)}. Set "
                     f"--config.data.text_field to the key holding the text.") from None
  return _check_str(text, text_field, where)


def _check_str(text: Any, text_field: str, where: str) -> str:
  if text is None:
    return ""
  if not isinstance(text, str):
    raise UserError(f"{where}: field {text_field!r} holds a {type(text).__name__}, expected "
                     f"a string; point data.text_field at a text column.")
  return text


# ---------------------------------------------------------------- Hugging Face


def _load_hf(data_cfg):
  import datasets

  name = os.path.expanduser(data_cfg.hf_name)
  kwargs = dict(split=data_cfg.hf_split, streaming=bool(data_cfg.streaming))
  if os.path.isfile(name):
    suffix = os.path.splitext(name[:-3] if name.endswith(".gz") else name)[1].lower()
    if suffix not in _HF_BUILDERS:
      raise UserError(f"data.hf_name={data_cfg.hf_name!r} is a local file of unsupported type "
                       f"{suffix!r}; use one of {sorted(_HF_BUILDERS)}.")
    return datasets.load_dataset(_HF_BUILDERS[suffix], data_files=name, **kwargs)
  revision = data_cfg.get("hf_revision", "") or None
  try:
    return datasets.load_dataset(name, data_cfg.hf_config or None, revision=revision, **kwargs)
  except RuntimeError as e:
    # datasets >= 4 refuses repositories that still ship a loading script; the
    # hub keeps an automatic Parquet conversion of them on this branch.
    if revision is None and "scripts are no longer supported" in str(e):
      return datasets.load_dataset(name, data_cfg.hf_config or None,
                                   revision=PARQUET_REVISION, **kwargs)
    raise


def _hub_error(data_cfg, e: Exception) -> ResourceUnavailable:
  return ResourceUnavailable(
      f"could not read Hugging Face dataset {data_cfg.hf_name!r} (config "
      f"{data_cfg.hf_config or None!r}, split {data_cfg.hf_split!r}): {type(e).__name__}: {e}\n"
      f"If this machine is offline or cannot reach the hub, train on local files with "
      f"--config.data.path='/data/*.jsonl' (txt/jsonl/parquet), or set "
      f"--config.data.hf_name to a local directory or data file; both work offline.")


def _iter_hf(data_cfg) -> Iterator[str]:
  try:
    ds = _load_hf(data_cfg)
  except (ValueError, KeyError):
    raise
  except Exception as e:  # network, auth, missing dataset: all look alike from here
    raise _hub_error(data_cfg, e) from e
  field = data_cfg.text_field
  columns = getattr(ds, "column_names", None)
  if columns is not None and field not in columns:
    raise UserError(f"dataset {data_cfg.hf_name!r} has no column {field!r}; its columns are "
                     f"{columns}. Set --config.data.text_field to one of them.")
  rows = iter(ds)
  index = 0
  while True:
    try:
      row = next(rows)
    except StopIteration:
      return
    except Exception as e:  # streaming reads lazily, so the hub can fail here too
      raise _hub_error(data_cfg, e) from e
    yield _text_of(row, field, f"dataset {data_cfg.hf_name!r} row {index}")
    index += 1


# ---------------------------------------------------------------- synthetic


def _iter_synthetic(data_cfg) -> Iterator[str]:
  from jaxslm.data.synthetic import iter_documents  # written separately; import lazily

  n = int(data_cfg.synthetic_documents)
  if n <= 0:
    raise UserError(f"data.synthetic_documents={n} must be > 0.")
  return iter_documents(int(data_cfg.synthetic_seed), n,
                        max_steps=int(data_cfg.synthetic_max_steps),
                        fmt=data_cfg.get("synthetic_format", "gsm8k"))
