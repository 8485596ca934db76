"""`ctsurv serve RUN_DIR`: a local web page to read one patient with a fitted model.

Built on Gradio, the field's habit (CT-CHAT and most medical VLM demos ship a Gradio page): it is maintained,
serves file uploads, images and forms from Python alone, runs offline (no share link, no analytics, no web fonts
here), and every event is also an HTTP API (``/gradio_api/call/read``), which the load check uses.

The page: a volume (upload or a path on the server; NIfTI, a zipped DICOM series, NRRD/MHA, npz/npy) and the
clinical fields the model uses (a form built from the run's clinical schema; empty = missing, imputed as in
training) -> the model's reading (:class:`ctsurv.reading.PatientReader`): an out-of-distribution banner when the
scan is unlike the training scans; axial, coronal and sagittal slices on the model's grid with window presets and
the evidence map of a chosen answer or of the risk over them; every predefined question with its answer and
P(yes) as bars; a free question; the risk, its percentile in the training cohort and the patient's survival curve
against the cohort's Kaplan-Meier curve; the reading as JSON.

Bad input (a broken or 2D file, an unknown clinical level, a non-number) gives a message on the page and the
server keeps serving. Each read scan is kept server-side in a small LRU (:data:`KEPT_SCANS`), so memory stays
bounded however many requests come; the page holds only its key.
"""

from __future__ import annotations

import ctypes
import gc
import io
import logging
import os
import shutil
import socket
import tempfile
import threading
import uuid
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctsurv.errors import CtsurvError

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline by design: no usage reports

log = logging.getLogger("ctsurv.serve")

KEPT_SCANS = 8  # scans kept for the viewer and the evidence maps (the least recently used is dropped)
NONE = "(none)"
MISSING = "(missing)"
UPLOAD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".npz", ".npy", ".dcm", ".zip")


@dataclass
class Entry:
    """A read scan, server-side: the scan, its reading, the clinical values it was read with, and its evidence
    maps once computed."""

    scan: Any
    reading: Any
    clinical: dict[str, Any]
    maps: dict[str, np.ndarray] | None = None  # label or "risk" -> block map (bx, by, bz), once computed
    lock: threading.Lock = field(default_factory=threading.Lock)


class Scans:
    """A thread-safe LRU of :class:`Entry` by key."""

    def __init__(self, size: int = KEPT_SCANS) -> None:
        self.size, self._items, self._lock = size, OrderedDict[str, Entry](), threading.Lock()

    def put(self, entry: Entry) -> str:
        key = uuid.uuid4().hex
        with self._lock:
            self._items[key] = entry
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return key

    def get(self, key: str | None) -> Entry | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def __len__(self) -> int:
        return len(self._items)


def volume_path(upload: str | None, path: str | None, workdir: Path) -> Path:
    """The volume to read: an uploaded file (a .zip is unpacked into ``workdir``: the folder holding most of its
    files, e.g. a DICOM series, or its one volume file) or a path on the server."""
    if upload:
        source = Path(upload)
    elif path and path.strip():
        source = Path(path.strip()).expanduser()
        if not source.exists():
            raise CtsurvError(f"{source} does not exist on the server; check the path or upload the file")
    else:
        raise CtsurvError("no volume: upload a CT volume or type its path on the server")
    if source.suffix.lower() != ".zip":
        return source
    try:
        with zipfile.ZipFile(source) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/") and not Path(n).name.startswith(".")]
            if not names:
                raise CtsurvError(f"{source.name} is an empty zip; zip the DICOM series' folder or one volume file")
            target = workdir / uuid.uuid4().hex
            for name in names:  # extracted one by one, never outside the target (no "../" in member names)
                dest = (target / name).resolve()
                if target.resolve() not in dest.parents:
                    raise CtsurvError(f"{source.name} holds a path outside the archive ({name}); re-zip the series")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(archive.read(name))
    except zipfile.BadZipFile:
        raise CtsurvError(f"{source.name} is not a readable zip file; zip the DICOM series' folder again") from None
    files = [target / n for n in names]
    volumes = [f for f in files if f.name.lower().endswith(UPLOAD_SUFFIXES[:-2])]  # a volume file, not .dcm/.zip
    if len(files) == 1 or (volumes and len(volumes) == 1 and len(files) <= 2):
        return volumes[0] if volumes else files[0]
    folders: dict[Path, int] = {}
    for f in files:
        folders[f.parent] = folders.get(f.parent, 0) + 1
    return max(folders, key=folders.get)  # the series: the folder with the most files


def parse_spacing(text: str | None) -> tuple[float, float, float] | None:
    """"Z Y X" (mm, spaces or commas) -> a tuple, empty -> None; anything else is a CtsurvError."""
    if text is None or not text.strip():
        return None
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise CtsurvError(f"spacing must be three positive numbers in mm, Z Y X (e.g. 1.5 0.8 0.8), got {text!r}")
    return values  # type: ignore[return-value]


def clinical_values(schema, values: list[Any]) -> dict[str, Any]:
    """Form values (numeric fields, then categorical ones, in the schema's order) -> column -> value or None."""
    columns = [*schema.numeric, *schema.categorical]
    out = {}
    for col, v in zip(columns, values):
        if v is None or (isinstance(v, str) and (not v.strip() or v == MISSING)):
            out[col] = None
        else:
            out[col] = v
    return out


class App:
    """The page's logic, apart from Gradio so that it reads (and tests) as plain Python."""

    def __init__(self, run_dir: str | Path, blocks_zyx: tuple[int, int, int] | None = None) -> None:
        from ctsurv.reading import DEFAULT_BLOCKS_ZYX, PatientReader

        self.reader = PatientReader(run_dir)
        self.blocks_zyx = tuple(blocks_zyx or DEFAULT_BLOCKS_ZYX)
        self.scans = Scans()
        self.workdir = Path(tempfile.mkdtemp(prefix="ctsurv-serve-"))
        self._model_lock = threading.Lock()  # one read of the model at a time: torch already uses every core

    # ------------------------------------------------------------------ events

    def read(self, upload: str | None, path: str | None, spacing: str | None = None, *clinical: Any) -> tuple[str, str | None, dict]:
        """Read a scan (``spacing``: "Z Y X" mm, for a NumPy array): (banner HTML, key of the kept scan or None,
        reading as a JSON-able dict or {})."""
        try:
            values = clinical_values(self.reader.schema, list(clinical))
            self.reader.clinical(values)  # a wrong field is named before the scan is read
            spacing_zyx = parse_spacing(spacing)
            source = volume_path(upload, path, self.workdir)
            try:
                with self._model_lock:
                    scan = self.reader.scan(source, spacing_zyx, study_id=_study_id(upload, path))
                    reading = self.reader.read(scan, values)
            finally:  # an unpacked zip is not needed once read
                if self.workdir in source.parents:
                    shutil.rmtree(self.workdir / source.relative_to(self.workdir).parts[0], ignore_errors=True)
        except CtsurvError as e:
            return _error(str(e)), None, {}
        except Exception as e:  # a file the readers choke on must not take the page down
            log.exception("reading the scan failed")
            return _error(f"the scan could not be read ({type(e).__name__}: {e}); check that it is a 3D CT volume"), None, {}
        key = self.scans.put(Entry(scan, reading, values))
        return banner(reading), key, reading_dict(reading)

    def evidence(self, key: str | None, target: str) -> np.ndarray | None:
        """The evidence map (X, Y, Z) of ``target`` (a presence label or "risk") for a kept scan; all maps are
        computed on the first request and kept as blocks (a few hundred numbers each, not a volume each)."""
        from ctsurv.evaluation.explain import to_voxels

        entry = self.scans.get(key)
        if entry is None or not target or target == NONE:
            return None
        with entry.lock:
            if entry.maps is None:
                with self._model_lock:
                    entry.maps = self.reader.evidence(entry.scan, entry.clinical, self.blocks_zyx)
        blocks = entry.maps.get(target)
        return None if blocks is None else to_voxels(blocks, tuple(entry.scan.hu.shape))

    def view(self, key: str | None, plane: str, index: int, window: str, target: str) -> np.ndarray | None:
        """A slice of a kept scan, with the evidence map of ``target`` (a label, "risk" or NONE) over it."""
        from ctsurv.evaluation.viewer import render

        entry = self.scans.get(key)
        if entry is None:
            return None
        return render(entry.scan.hu, entry.scan.spacing_xyz, plane, int(index), window, self.evidence(key, target))

    def peak(self, key: str | None, target: str) -> tuple[int, int, int] | None:
        """The voxel (x, y, z) where ``target``'s evidence is largest: where the sliders jump to."""
        from ctsurv.evaluation.viewer import peak_index

        values = self.evidence(key, target)
        return None if values is None else peak_index(values)

    def ask(self, key: str | None, question: str) -> str:
        entry = self.scans.get(key)
        if entry is None:
            return "Read a scan first."
        try:
            with self._model_lock:
                return self.reader.ask(entry.scan, question)
        except CtsurvError as e:
            return f"⚠ {e}"

    def curve(self, key: str | None) -> np.ndarray | None:
        entry = self.scans.get(key)
        return None if entry is None else curve_image(entry.reading)


# ---------------------------------------------------------------------------- what the page shows


def _study_id(upload: str | None, path: str | None) -> str:
    name = Path(upload or (path or "scan").strip()).name
    return name.split(".")[0] or "scan"


def _error(message: str) -> str:
    return f'<div class="ctsurv-error" id="ctsurv-error">⚠ {_html(message)}</div>'


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def banner(reading) -> str:
    """The out-of-distribution banner (or a quiet line when the scan looks like the training scans)."""
    if reading.ood is None:
        return '<div class="ctsurv-note">This run saved no out-of-distribution reference (rerun `ctsurv survival`).</div>'
    if reading.ood:
        return (
            f'<div class="ctsurv-ood" id="ctsurv-ood">⚠ This scan is unlike the training scans: its encoder features lie '
            f"further from them than {reading.ood_percentile:.0f}% of the training scans do (distance "
            f"{reading.ood_score:.1f}). The answers, maps and risk below may not hold for it.</div>"
        )
    return (
        f'<div class="ctsurv-ok" id="ctsurv-in">The scan resembles the training scans (OOD distance {reading.ood_score:.1f}, '
        f"{reading.ood_percentile:.0f}th percentile of the training scans).</div>"
    )


def reading_dict(reading) -> dict:
    """The reading as JSON-able numbers and text (the page's details panel, and the API's answer)."""
    return {
        "id": reading.id,
        "risk": reading.risk,
        "risk_percentile": reading.risk_percentile,
        "p_yes": reading.p_yes,
        "answers": reading.answers,
        "ood_score": reading.ood_score,
        "ood_percentile": reading.ood_percentile,
        "ood": None if reading.ood is None else int(reading.ood),
    }


def risk_markdown(reading, horizons: list[float]) -> str:
    at = ", ".join(f"S({t:g}) = {reading.survival_at(t):.2f}" for t in horizons)
    return (
        f"**Risk score** {reading.risk:+.3f} — higher than {reading.risk_percentile:.0f}% of the training cohort.  \n"
        f"Predicted survival: {at}."
    )


def curve_image(reading) -> np.ndarray:
    """The patient's survival curve against the training cohort's Kaplan-Meier curve, as an RGB image."""
    from PIL import Image

    from ctsurv.evaluation.figures import patient_curve

    km = None if reading.km_times is None else (reading.km_times, reading.km_survival)
    fig = patient_curve(reading.times, reading.survival, km=km)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    fig.clear()
    del fig
    # a figure is a reference cycle holding megabytes in few Python objects: collected now, not whenever the cyclic
    # collector next reaches them (the load check's memory grew ~0.5 MB per request without this); the young
    # generations hold it and take microseconds, a full collection 0.3 s with the model loaded
    gc.collect(1)
    return np.asarray(Image.open(buffer).convert("RGB"))


def answers_table(reading) -> str:
    """The answers as an HTML table, one row per question (generated text escaped)."""
    rows = "".join(f"<tr><td>{_html(q)}</td><td>{_html(a)}</td></tr>" for q, a in reading.answers.items())
    head = "<thead><tr><th>question</th><th>answer</th></tr></thead>"
    return f'<table class="ctsurv-answers">{head}<tbody>{rows}</tbody></table>'


CSS = """
.ctsurv-ood {background:#fde2e1;border:2px solid #c0392b;color:#7b1d14;padding:10px;border-radius:6px;font-weight:600}
.ctsurv-ok {background:#e7f5ea;border:1px solid #3c8d50;color:#1d4d28;padding:8px;border-radius:6px}
.ctsurv-note, .ctsurv-error {background:#fff4d6;border:1px solid #c59b1a;padding:8px;border-radius:6px}
.ctsurv-answers {width:100%;border-collapse:collapse;font-size:0.92em}
.ctsurv-answers td, .ctsurv-answers th {border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}
"""


def build(app: App):
    """The Gradio Blocks of the page."""
    import gradio as gr

    from ctsurv.evaluation.viewer import AXIS, PLANES, WINDOWS
    from ctsurv.reading import RISK
    from ctsurv.text.questions import PRESENCE_LABELS

    reader = app.reader
    schema = reader.schema
    horizons = [float(t) for t in reader.fitted.meta["horizon_times"]]
    # uploads are copied into Gradio's cache: files older than an hour are deleted every 10 minutes
    with gr.Blocks(title="ctsurv — read one patient", delete_cache=(600, 3600)) as page:
        gr.Markdown(
            f"## ctsurv: read one patient\nModel: `{reader.run_dir}` (checkpoint `{reader.fitted.checkpoint().resolve()}`). "
            f"Evidence maps: occlusion in {' × '.join(map(str, app.blocks_zyx))} blocks (Z × Y × X). "
            "A research tool, not a medical device."
        )
        key = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                upload = gr.File(label="CT volume: NIfTI, zipped DICOM series, NRRD/MHA, npz", type="filepath",
                                 elem_id="volume")
                path = gr.Textbox(label="…or its path on the server", elem_id="path")
                spacing = gr.Textbox(label="Spacing Z Y X in mm (only for .npy/.npz arrays)", elem_id="spacing")
                fields = []
                with gr.Accordion("Clinical data (empty = missing)", open=True):
                    for col, mean in zip(schema.numeric, schema.means):  # text: empty is missing (a Number shows 0)
                        fields.append(gr.Textbox(label=col, placeholder=f"missing (training mean {mean:.4g})",
                                                 elem_id=f"clinical-{col}"))
                    for col, levels in zip(schema.categorical, schema.levels):
                        fields.append(gr.Dropdown([MISSING, *levels], value=MISSING, label=col, allow_custom_value=True,
                                                  elem_id=f"clinical-{col}"))
                run = gr.Button("Read the scan", variant="primary", elem_id="read")
            with gr.Column(scale=3):
                status = gr.HTML("Upload a scan and press “Read the scan”.", elem_id="banner")
                with gr.Row():
                    window = gr.Radio(list(WINDOWS), value="lung", label="Window", elem_id="window")
                    target = gr.Dropdown([NONE, RISK, *PRESENCE_LABELS], value=NONE, label="Evidence map for",
                                         elem_id="target")
                with gr.Row():
                    images, sliders = {}, {}
                    for plane in PLANES:
                        with gr.Column(min_width=200):
                            images[plane] = gr.Image(label=plane, type="numpy", format="png", interactive=False,
                                                     elem_id=f"view-{plane}")
                            sliders[plane] = gr.Slider(0, 1, value=0, step=1, label=f"{plane} slice",
                                                       elem_id=f"slider-{plane}")
                with gr.Row():
                    with gr.Column():
                        p_yes = gr.Label(label="P(yes) per finding", num_top_classes=len(PRESENCE_LABELS), show_heading=False,
                                         elem_id="p_yes")
                    with gr.Column():
                        risk = gr.Markdown(elem_id="risk")
                        curve = gr.Image(label="Survival curve", type="numpy", format="png", interactive=False,
                                         elem_id="curve")
                answers = gr.HTML(elem_id="answers")
                with gr.Row():
                    question = gr.Textbox(label="Ask a question about this scan", scale=4, elem_id="question")
                    ask = gr.Button("Ask", scale=1, elem_id="ask")
                reply = gr.Textbox(label="Answer", interactive=False, elem_id="reply")
                with gr.Accordion("Reading (JSON)", open=False):
                    details = gr.JSON(elem_id="details")

        def on_read(upload_value, path_value, spacing_value, *clinical):
            message, new_key, reading = app.read(upload_value, path_value, spacing_value, *clinical)
            entry = app.scans.get(new_key)
            if entry is None:
                blank = [None] * len(PLANES) + [gr.Slider(0, 1, value=0)] * len(PLANES)
                return [message, None, {}, None, "", None, "", *blank]
            shape = entry.scan.hu.shape
            middle = [s // 2 for s in shape]
            views = [app.view(new_key, p, middle[AXIS[p]], "lung", NONE) for p in PLANES]
            slides = [gr.Slider(0, shape[AXIS[p]] - 1, value=middle[AXIS[p]], step=1) for p in PLANES]
            return [message, new_key, reading, entry.reading.p_yes, risk_markdown(entry.reading, horizons),
                    app.curve(new_key), answers_table(entry.reading), *views, *slides]

        read_outputs = [status, key, details, p_yes, risk, curve, answers, *images.values(), *sliders.values()]
        run.click(on_read, [upload, path, spacing, *fields], read_outputs, api_name="read").then(
            lambda: NONE, None, target, api_name=False
        )

        def on_target(k, tgt, win, *indices):
            peak = app.peak(k, tgt)
            idx = list(indices) if peak is None else [peak[AXIS[p]] for p in PLANES]
            views = [app.view(k, p, i, win, tgt) for p, i in zip(PLANES, idx)]
            return [*views, *(gr.Slider(value=i) for i in idx)]

        target.change(on_target, [key, target, window, *sliders.values()], [*images.values(), *sliders.values()],
                      api_name=False)

        def redraw(k, tgt, win, *indices):
            return [app.view(k, p, i, win, tgt) for p, i in zip(PLANES, indices)]

        window.change(redraw, [key, target, window, *sliders.values()], list(images.values()), api_name=False)
        for plane in PLANES:
            sliders[plane].release(
                lambda k, tgt, win, i, p=plane: app.view(k, p, i, win, tgt),
                [key, target, window, sliders[plane]], images[plane], api_name=False,
            )
        ask.click(app.ask, [key, question], reply, api_name="ask")
    return page


def _few_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (``mallopt(M_ARENA_MAX)``, as ``MALLOC_ARENA_MAX`` would at start-up): every new
    request thread of the server otherwise gets an arena of its own, each keeping its freed megabytes of slices
    and figures, and the server's memory climbs with the number of threads that ever served (the load check: +45 MB
    a round of 4 concurrent clients). A no-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def launch(
    run_dir: str | Path, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
    blocks_zyx: tuple[int, int, int] | None = None,
):
    """Load the model once and serve the page on ``host:port`` (blocks until interrupted unless ``block`` is false;
    then returns the Gradio Blocks, whose ``close()`` stops it). ``blocks_zyx``: the evidence maps' occlusion grid."""
    try:
        import gradio as gr
    except ImportError:
        raise CtsurvError('ctsurv serve needs Gradio: pip install -e ".[serve]" (or pip install "gradio>=6,<7")') from None

    check_port(host, port)  # before the model loads: a busy port is a one-line error at once
    _few_malloc_arenas()
    page = build(App(run_dir, blocks_zyx))
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts: offline
    page.queue(default_concurrency_limit=4)
    # no share link, no server-side rendering (needs node), no run history (it would keep patients' scans and
    # answers in the browser, or in a hub bucket); sessions' state is one key each, and at most 100 sessions keep it
    try:
        page.launch(server_name=host, server_port=port, share=False, ssr_mode=False, show_error=True, quiet=not block,
                    theme=theme, css=CSS, prevent_thread_lock=not block, footer_links=["api"], run_history=False,
                    state_session_capacity=100)
    except OSError as e:  # the port was taken meanwhile, or the host is not an address of this machine
        raise CtsurvError(f"cannot serve on {host}:{port} ({e}); choose another --port or --host") from None
    return page


def check_port(host: str, port: int) -> None:
    """A CtsurvError when ``host:port`` cannot be listened on (in use, not this machine's address, privileged)."""
    if not 0 < port < 65536:
        raise CtsurvError(f"--port must be between 1 and 65535, got {port}")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as e:
        raise CtsurvError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port, or --host") from None
