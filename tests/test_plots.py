"""`dvc plots show` renders offline: Vega inlined, log-scale eps, one colour per attack."""

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / ".dvc" / "plots" / "offline.html"
ATTACKS = ["fgsm", "fgm", "rfgsm", "step_ll"]
INLINED = re.compile(
    r'<script type="text/javascript" data-inlined="([^"]+)">\n(.*?)\n</script>', re.S
)


def _tool():
    spec = importlib.util.spec_from_file_location(
        "offline_plots_html", ROOT / "tools" / "offline_plots_html.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_page_inlines_exactly_the_pinned_scripts():
    tool = _tool()
    page = PAGE.read_text(encoding="utf-8")
    scripts = INLINED.findall(page)
    assert [name for name, _ in scripts] == list(tool.SCRIPTS)
    for name, code in scripts:
        assert hashlib.sha256(code.encode()).hexdigest() == tool.SCRIPTS[name][1], name
    assert "<script src" not in page.replace(" ", "")
    assert "{plot_divs}" in page and "{scripts}" not in page  # dvc puts its CDN links there
    assert PAGE.stat().st_size < 2_000_000


def test_config_and_dvc_yaml_use_the_templates():
    config = (ROOT / ".dvc" / "config").read_text()
    assert re.search(r"^\[plots\]\s*\n\s*html_template = plots/offline\.html", config, re.M)
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    curves = [next(iter(p.values())) for p in plots if isinstance(p, dict)]
    eps_curves = [c for c in curves if c["x"] == "eps"]
    assert len(eps_curves) == 2 and all(c["template"] == "accuracy_vs_log_eps" for c in eps_curves)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """`dvc plots show` in a scratch repository holding the plot config and synthetic CSVs."""
    d = tmp_path_factory.mktemp("plots")
    for rel in ["dvc.yaml", "params.yaml", ".dvc/config", ".dvc/plots"]:
        src, dest = ROOT / rel, d / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    grids = {a: sorted(params["attacks"][a]["epsilons"]) for a in ATTACKS}
    (d / "plots" / "attacks").mkdir(parents=True)
    for k, a in enumerate(ATTACKS):
        rows = ["attack,eps,top1,top5", f"{a},0.0,0.9,1.0"]
        rows += [f"{a},{e},{0.8 - 0.1 * k - i / 100:.4f},0.95" for i, e in enumerate(grids[a])]
        (d / "plots" / "attacks" / f"{a}.csv").write_text("\n".join(rows) + "\n")
    for name in ["top1_vs_eps", "top5_vs_eps", "examples"]:
        Image.new("RGB", (4, 4)).save(d / "plots" / "attacks" / f"{name}.png")
    env = dict(
        os.environ,
        DVC_NO_ANALYTICS="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    subprocess.run(["git", "init", "-q"], cwd=d, check=True)
    proc = subprocess.run(["dvc", "plots", "show"], cwd=d, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    as_json = subprocess.run(
        ["dvc", "plots", "show", "--json"],
        cwd=d,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return (
        d,
        (d / "dvc_plots" / "index.html").read_text(encoding="utf-8"),
        json.loads(as_json),
        grids,
    )


def _specs(html: str) -> dict:
    found = re.findall(
        r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*'
        r"var spec = (\{.*?\});\s*vegaEmbed",
        html,
        re.S,
    )
    return {name: json.loads(spec) for name, spec in found}


def test_rendered_page_is_offline_and_log_scale(rendered):
    _, html, _, _ = rendered
    assert not re.search(r"<script[^>]*\bsrc\s*=", html)
    assert "cdn.jsdelivr" not in html
    assert [name for name, _ in INLINED.findall(html)] == list(_tool().SCRIPTS)
    specs = _specs(html)
    assert {"top1_vs_eps", "top5_vs_eps"} <= set(specs)
    for spec in (specs["top1_vs_eps"], specs["top5_vs_eps"]):
        curve = spec["layer"][0]
        assert curve["transform"] == [{"filter": "datum.eps > 0"}]
        assert curve["encoding"]["x"]["field"] == "eps"
        assert curve["encoding"]["x"]["scale"]["type"] == "log"
        assert curve["encoding"]["color"]["field"] == "attack"
        assert spec["layer"][1]["transform"] == [{"filter": "datum.eps == 0"}]


def test_every_point_of_every_attack_is_plotted(rendered):
    _, _, shown, grids = rendered
    for plot in ("top1_vs_eps", "top5_vs_eps"):
        values = shown["data"][plot][0]["content"]["data"]["values"]
        for a in ATTACKS:
            eps = sorted(float(v["eps"]) for v in values if v["attack"] == a)
            assert eps == [0.0, *grids[a]]


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js to run Vega")
def test_inlined_vega_renders_the_spec(rendered, tmp_path):
    """Run the page's own inlined Vega/Vega-Lite on its spec: a log x scale, 4 colours."""
    _, html, _, grids = rendered
    scripts = dict(INLINED.findall(html))
    for name, code in scripts.items():
        (tmp_path / f"{name.split('@')[0]}.js").write_text(code, encoding="utf-8")
    spec = _specs(html)["top1_vs_eps"]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "render.js").write_text("""
const vega = require('./vega.js'); global.vega = vega;
const vl = require('./vega-lite.js');
const spec = require('./spec.json');
const view = new vega.View(vega.parse(vl.compile(spec).spec), {renderer: 'none'});
view.runAsync().then(() => view.toSVG()).then(svg => console.log(JSON.stringify({
  x: view.scale('x').type, domain: view.scale('x').domain(),
  colors: view.scale('color').domain(), marks: (svg.match(/<path/g) || []).length})));
""")
    proc = subprocess.run(
        ["node", "render.js"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    lowest = min(min(g) for g in grids.values())
    assert out["x"] == "log"
    assert np.isclose(out["domain"][0], lowest) and out["domain"][0] > 0
    assert sorted(out["colors"]) == sorted(ATTACKS)
    assert out["marks"] > sum(len(g) for g in grids.values())  # every point drawn
