"""The recovery window as one self-contained HTML page (``certsrv catalog --html``, service ``/ui/backups``).

No external asset: the CSS and the script are inline and the catalog is embedded as JSON, so the
page works offline and from a file. The timeline shows each chain on its own row: the full set,
its incrementals (placed at the last moment each reaches), sets cut off by a gap and the gaps
themselves in red. A click on a row picks that moment and shows the ``certsrv restore`` command
for it, chosen by the same rule as :meth:`pycertsrv.backupset.catalog.Catalog.restore_command`
(the newest full set covering the moment, then the incrementals up to the first one reaching it).
"""

from __future__ import annotations

import html
import json
from typing import Any

from .catalog import Catalog

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}
#timeline{position:relative;border:1px solid #999;background:#fafafa;margin:1em 0;cursor:crosshair}
.row{position:relative;height:34px;border-bottom:1px solid #ddd}
.row .label{position:absolute;left:4px;top:2px;font-size:11px;color:#555;pointer-events:none}
.span{position:absolute;top:14px;height:12px;background:#9bd29b;border-radius:3px;pointer-events:none}
.set{position:absolute;top:10px;width:8px;height:20px;margin-left:-4px;border-radius:2px}
.set.full{background:#1f4e9c}
.set.incremental{background:#5aa0e6}
.set.cutoff{background:#bbb;outline:2px solid #d22}
.gap{position:absolute;top:14px;height:12px;background:#d22;pointer-events:none}
.archive{position:absolute;top:14px;height:12px;pointer-events:none;
  background:repeating-linear-gradient(45deg,#9bd29b 0 4px,#cfe9cf 4px 8px)}
.hole{position:absolute;top:0;bottom:0;background:rgba(221,34,34,.12);pointer-events:none}
#cursor{position:absolute;top:0;bottom:0;width:2px;background:#000;display:none;pointer-events:none}
.axis{display:flex;justify-content:space-between;font-size:11px;color:#555}
pre{background:#111;color:#eee;padding:.7em;white-space:pre-wrap;word-break:break-all}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}
.warn{color:#a00}.bad{color:#a00;font-weight:bold}
"""

_JS = r"""
(function(){
const D = JSON.parse(document.getElementById('catalog-data').textContent);
const tl = document.getElementById('timeline');
const times = [];
for (const s of D.sets)
  for (const k of ['start_us', 'first_record_us', 'last_record_us']) if (s[k] != null) times.push(s[k]);
for (const c of D.chains) { times.push(c.start_us); times.push(c.end_us); }
let t0 = Math.min(...times), t1 = Math.max(...times);
if (!isFinite(t0)) { t0 = 0; t1 = 1; }
const pad = Math.max((t1 - t0) * 0.04, 1000000); t0 -= pad; t1 += pad;
const pct = t => (100 * (t - t0) / (t1 - t0)) + '%';
function el(tag, cls, parent, attrs) {
  const e = document.createElement(tag); if (cls) e.className = cls;
  for (const k in (attrs || {})) e.setAttribute(k, attrs[k]);
  parent.appendChild(e); return e;
}
function isoUs(us) {
  const ms = Math.floor(us / 1000), rest = us - ms * 1000;
  const s = new Date(ms).toISOString();  // YYYY-MM-DDTHH:MM:SS.mmmZ
  return s.slice(0, 23) + String(rest).padStart(3, '0') + '+00:00';
}
function quote(s) {  // Python's shlex.quote
  if (s === '') return "''";
  if (/^[A-Za-z0-9_@%+=:,.\/-]+$/.test(s)) return s;
  return "'" + s.replace(/'/g, "'\"'\"'") + "'";
}
const byName = {}; for (const s of D.sets) byName[s.name] = s;
for (const h of D.holes)
  el('div', 'hole', tl, {style: `left:${pct(h.from_us)};width:calc(${pct(h.to_us)} - ${pct(h.from_us)})`});
for (const c of D.chains) {
  const row = el('div', 'row', tl, {'data-chain': c.full});
  el('span', 'label', row).textContent = 'chain ' + c.full;
  el('div', 'span', row, {style: `left:${pct(c.start_us)};width:calc(${pct(c.sets_end_us)} - ${pct(c.start_us)})`});
  for (const st of c.steps) {
    const s = byName[st.set];
    const m = el('div', 'set ' + s.kind, row,
                 {'data-set': s.name, title: `${s.kind} ${s.name} reaches ${st.reach}`});
    m.style.left = pct(st.reach_us);
  }
  if (c.archive && c.archive.end_us != null && c.archive.end_us > c.sets_end_us)  // the archive's own band
    el('div', 'archive', row, {'data-archive': c.archive.directory,
       title: `archive ${c.archive.first}..${c.archive.last} reaches ${c.archive.end}`,
       style: `left:${pct(c.sets_end_us)};width:calc(${pct(c.archive.end_us)} - ${pct(c.sets_end_us)})`});
  for (const g of [c.archive_gap].filter(Boolean))
    el('div', 'gap', row, {'data-gap': g.after, title: g.text,
       style: `left:${pct(g.from_us)};width:calc(${pct(t1)} - ${pct(g.from_us)})`});
  if (c.gap) {
    const to = c.gap.to_us != null ? c.gap.to_us : t1;
    el('div', 'gap', row, {'data-gap': c.gap.before, title: c.gap.text,
       style: `left:${pct(c.gap.from_us)};width:calc(${pct(to)} - ${pct(c.gap.from_us)})`});
  }
  for (const n of c.cut_off) {
    const s = byName[n];
    const m = el('div', 'set cutoff', row, {'data-set': s.name, title: `not restorable (after a gap): ${s.name}`});
    m.style.left = pct(s.last_record_us != null ? s.last_record_us : (s.first_record_us || t0));
  }
}
const cursor = el('div', '', tl, {id: 'cursor'});
const ax = document.getElementById('axis');
for (let i = 0; i <= 4; i++)
  el('span', '', ax).textContent = isoUs(Math.round(t0 + (t1 - t0) * i / 4)).slice(0, 19) + 'Z';
function commandFor(at) {
  const cov = D.chains.filter(c => c.start_us <= at && at <= c.end_us);
  if (!cov.length) return null;
  const c = cov.reduce((a, b) => (b.start_us > a.start_us ? b : a));
  const dirs = [];
  for (const st of c.steps) { dirs.push(st.directory); if (st.reach_us >= at) break; }
  const argv = ['certsrv', 'restore', ...dirs, '--home', D.restore_home, '--password-file', D.password_file];
  if (!byName[c.full].has_key) argv.push('--database-only');
  if (c.archive && D.archive && at > c.sets_end_us) argv.push('--archive', D.archive.dest);
  argv.push('--until', isoUs(at));
  return argv.map(quote).join(' ');
}
tl.addEventListener('click', ev => {
  const r = tl.getBoundingClientRect();
  const at = Math.round(t0 + (t1 - t0) * (ev.clientX - r.left) / r.width);
  cursor.style.display = 'block'; cursor.style.left = pct(at);
  document.getElementById('moment').textContent = isoUs(at);
  const cmd = commandFor(at);
  const out = document.getElementById('command');
  out.textContent = cmd ||
    'Not restorable at this moment: it is outside the recovery window (see the gaps in red).';
  out.className = cmd ? 'ok' : 'bad';
});
})();
"""


def _rows(cat: Catalog) -> str:
    out = []
    for s in cat.sets:
        m = s.manifest
        gens = f"{m.gen_low:08X}..{m.gen_high:08X}" if m else ""
        state = "ok" if s.ok else "unusable: " + (s.problems[0] if s.problems else "unreadable")
        if any(s in c.cut_off for c in cat.chains):
            state = "not restorable (after a gap)"
        elif s in cat.orphans:
            state = "not restorable (no full set)"
        cls = "" if state == "ok" else ' class="bad"'
        out.append(f'<tr data-set="{html.escape(s.name)}"><td>{html.escape(s.name)}</td><td>{s.kind}</td>'
                   f"<td>{gens}</td><td>{html.escape(m.created if m else '')}</td><td{cls}>{html.escape(state)}</td>"
                   "</tr>")
    return "\n".join(out)


def render_html(cat: Catalog, *, restore_home: str = "NEW_HOME", password_file: str = "PASSWORD_FILE") -> str:
    """The page for ``cat``.

    :param cat: the catalog.
    :param restore_home: the ``--home`` shown in restore commands.
    :param password_file: the ``--password-file`` shown in restore commands.
    """
    data: dict[str, Any] = cat.to_json()
    data.update(restore_home=restore_home, password_file=password_file)
    for s, js in zip(cat.sets, data["sets"], strict=True):
        js.update(start_us=s.start_us, first_record_us=s.first_record_us, last_record_us=s.last_record_us)
    # Inside <script>, "</" would end the element early: JSON allows "<\/" for it.
    blob = json.dumps(data).replace("</", "<\\/")
    window = "".join(f"<li>{h['from']} .. {h['to']}</li>" for h in data["window"]) or "<li>none</li>"
    holes = "".join(f'<li class="warn">{html.escape(h["from"])} .. {html.escape(h["to"])}: '
                    f"{html.escape(h['why'])}</li>" for h in cat.holes)
    warnings = "".join(f'<li class="warn">{html.escape(w)}</li>' for w in cat.warnings)
    title = f"Recovery window: {cat.root}"
    a = cat.archive
    archive = html.escape("no archive given (--archive DEST)" if a is None else
                          f"{a['dest']}: {a['generations']} generation(s) continue the sets, newest record "
                          f"{a['newest_record'] or 'none'}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Full sets dark blue, incrementals light blue (placed at the last moment each reaches), restorable spans green,
gaps red. Click a moment on the timeline for the restore command.</p>
<div id="timeline"></div><div class="axis" id="axis"></div>
<p>Moment: <span id="moment">(none chosen)</span></p>
<pre id="command">Click on the timeline.</pre>
<h2>Window</h2><ul id="window">{window}</ul><ul id="holes">{holes}</ul>
<h2>Warnings</h2><ul id="warnings">{warnings or "<li>none</li>"}</ul>
<h2>Sets</h2><table id="sets"><tr><th>set</th><th>kind</th><th>generations</th><th>created</th><th>state</th></tr>
{_rows(cat)}</table>
<p id="archive">Archive coverage (striped green): {archive}</p>
<script type="application/json" id="catalog-data">{blob}</script>
<script>{_JS}</script>
</body></html>
"""


__all__ = ["render_html"]
