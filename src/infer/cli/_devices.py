"""`infer devices`: the devices here, what they can do, and which backends can drive each."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from .. import demo, selection
from ..backends import base
from ..device import Device, probe_hardware
from ..model import Model
from ..options import Options
from ._common import fmt_bytes, help_text, out, write_json

HELP = help_text(
    "List devices and their capabilities (vendor, cores or memory, compute capability, "
    "the precisions the hardware runs, CPU instruction-set extensions), and for each "
    "device every backend infer knows, with the reason for each one that cannot drive it.",
    "infer devices",
    "infer devices --json > devices.json",
)


def register(app: typer.Typer) -> None:
    app.command(
        "devices",
        help=HELP,
        short_help="Devices here, what they can do, which backends drive them.",
    )(devices)


def devices(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    data = report()
    if as_json:
        write_json(data, "-")
        return
    console = out()
    for d in data["devices"]:
        title = Text(d["device"], style="bold")
        if d["name"]:
            title.append(f"  {d['name']}")
        console.print(title)
        facts = []
        if d["vendor"]:
            facts.append(d["vendor"])
        if d["cores"]:
            facts.append(f"{d['cores']} cores")
        if d["memory_bytes"]:
            facts.append(f"memory {fmt_bytes(d['memory_bytes'])}")
        if d["compute_capability"]:
            facts.append("compute capability {}.{}".format(*d["compute_capability"]))
        if d["driver"]:
            facts.append(f"driver {d['driver']}")
        if facts:
            console.print("  " + " · ".join(facts))
        if d["precisions"]:
            console.print(f"  precisions: {', '.join(d['precisions'])}")
        if d["isa"]:
            console.print(Text("  ISA: " + " ".join(d["isa"])))
        for b in d["backends"]:
            line = Text("  ")
            if b["ok"]:
                line.append("✓ ", style="green")
                line.append(b["backend"])
            else:
                line.append("✗ ", style="red")
                line.append(b["backend"])
                line.append(f": {b['reason']}", style="dim")
            console.print(line)
        console.print()
    console.print(Text("backends", style="bold"))
    for b in data["backends"]:
        line = Text("  ")
        if b["available"]:
            line.append("✓ ", style="green")
            line.append(f"{b['name']} {b['version']}")
            if b["note"]:
                line.append(f" ({b['note']})", style="dim")
        else:
            line.append("✗ ", style="red")
            line.append(f"{b['name']}: {b['reason']}", style="dim")
            if b["install"]:
                line.append(f"; install: {b['install']}", style="dim")
        console.print(line)
    for note in data["notes"]:
        console.print(Text(f"note: {note}", style="dim"))


def _elsewhere(backend: str, kind: str, kinds_here: set[str]) -> str:
    """Why `backend` is not listed under a device of `kind`: where the request runs it instead.

    device="auto" (the default) is more than OpenVINO's AUTO plugin, the device listed as auto:
    its rows put ONNX Runtime and the reference evaluator on the CPU, TensorRT on CUDA."""
    where = sorted({r.kind for r in selection.TABLE.get(kind, ()) if r.backend == backend})
    if not where:
        return f"infer does not use {backend} on {kind} devices"
    here = [k for k in where if k in kinds_here]
    request = f"device={kind!r}" + (" (the default)" if kind == "auto" else "")
    if here:
        return f"{request} runs {backend} on the {' and '.join(here)} device, listed there"
    return f"{request} runs {backend} on a {' or '.join(where)} device; there is none here"


def report() -> dict[str, Any]:
    """Devices, backends and notes as JSON-ready data."""
    probe_model = Model.load(demo.model())
    options = Options()
    out_devices = []
    found = selection.devices()
    kinds_here = {d.kind for d in found}
    for d in found:
        caps = d.capabilities
        verdicts = []
        # Whether a backend drives the device: the probe model's ops are not the question.
        rows = selection.preflight(probe_model, Device(d.kind, d.index), options, ops=False)
        mine = [a for a in rows if a.row is not None and a.row.kind == d.kind]
        for a in mine:
            verdicts.append(
                {"backend": a.backend, "ok": a.eligible, "reason": None if a.eligible else a.reason}
            )
        for name in selection.BACKENDS:
            if not any(a.row is not None and a.row.backend == name for a in mine):
                verdicts.append(
                    {"backend": name, "ok": False, "reason": _elsewhere(name, d.kind, kinds_here)}
                )
        out_devices.append(
            {
                "device": str(d),
                "kind": d.kind,
                "index": d.index,
                "name": d.name,
                "vendor": caps.vendor,
                "cores": caps.cores,
                "memory_bytes": caps.memory_bytes,
                "compute_capability": list(caps.compute_capability)
                if caps.compute_capability
                else None,
                "driver": caps.driver,
                "precisions": sorted(caps.precisions),
                "isa": sorted(caps.isa),
                "source": caps.source,
                "backends": verdicts,
            }
        )
    backends = []
    for name in selection.BACKENDS:
        info = base.get(name).probe()
        backends.append(
            {
                "name": name,
                "available": info.available,
                "version": info.version,
                "devices": [str(x) for x in info.devices],
                "reason": "" if info.available else info.reason,
                "note": info.reason if info.available else "",
                "install": "" if info.available else info.install,
            }
        )
    return {
        "devices": out_devices,
        "backends": backends,
        "notes": list(probe_hardware().notes),
    }
