"""The search page ``semcode serve`` answers at ``/``: one HTML document, rendered on the server.

A plain GET form (``/?q=...&mode=...&language=...``), so a search is a URL to share or bookmark and the
page works without JavaScript; the results go through the same checks and batcher as ``GET /search``
(semcode.serve.app). Each result shows its location (a link when the server has ``--link-base``), language
and score, the signature, the doc line and the first lines of the code, highlighted by Pygments into
HTML classes; the Pygments style sheet and a few lines of script are inline. Nothing is fetched from
anywhere else (no CDN, no font): it works offline and behind a firewall, and the Content-Security-Policy
header (``policy``) tells the browser so: only this document's own style and script (by nonce) run.

Keyboard: the query box has focus on load; ``/`` goes back to it, ``j``/``k`` (or the arrow keys) move
between results, Enter on a result opens its link, Escape leaves the query box.

Every text from the bundle (code, paths, doc comments: anyone can write them) is escaped; a link is made
only when the filled-in template is an http(s) URL.
"""

from __future__ import annotations

import html
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from pygments.formatters import HtmlFormatter

from semcode.serve.search import highlight, shown_lines

MAX_LINES = 20  # code lines shown per result, like `semcode search --max-lines`'s default
CODE_CLASS = "hl"
PYGMENTS_CSS = HtmlFormatter(style="default").get_style_defs(f".{CODE_CLASS}")

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 980px; padding: 1rem 1.5rem;
       color: #1b1f24; background: #fff; }
h1 { font-size: 1.3rem; margin: 0 0 .2rem; }
.about { color: #57606a; font-size: .85rem; margin: 0 0 1rem; }
form { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; margin-bottom: 1rem; }
label { display: flex; flex-direction: column; font-size: .8rem; color: #57606a; }
input[type=search] { font-size: 1rem; padding: .45rem .6rem; width: 28rem; max-width: 80vw; }
select, button { font-size: .95rem; padding: .4rem .5rem; }
:focus-visible { outline: 3px solid #0969da; outline-offset: 2px; }
ol.results { list-style: none; padding: 0; margin: 0; }
li.hit { border: 1px solid #d0d7de; border-radius: 6px; padding: .6rem .8rem; margin-bottom: .8rem; }
li.hit:focus { border-color: #0969da; box-shadow: 0 0 0 3px #b6e3ff; outline: none; }
.head { display: flex; gap: .8rem; align-items: baseline; flex-wrap: wrap; }
.rank { color: #57606a; }
.location { font-family: ui-monospace, monospace; font-weight: 600; }
.language, .score { color: #57606a; font-size: .85rem; }
.signature { font-family: ui-monospace, monospace; margin: .3rem 0 0; white-space: pre-wrap; }
.doc { color: #57606a; font-style: italic; margin: .2rem 0 0; }
pre { background: #f6f8fa; padding: .5rem .7rem; overflow-x: auto; font-size: .85rem; margin: .5rem 0 0; }
.more { color: #57606a; font-size: .8rem; margin: .2rem 0 0; }
.error { color: #a40e26; background: #ffebe9; padding: .5rem .8rem; border-radius: 6px; }
.status { color: #57606a; }
kbd { border: 1px solid #d0d7de; border-radius: 3px; padding: 0 .25rem; font-size: .8rem; }
"""

SCRIPT = """
const box = document.getElementById('q');
document.addEventListener('keydown', (event) => {
  const target = event.target;
  if (target.matches('input, select, textarea, button')) {
    if (event.key === 'Escape') target.blur();
    return;
  }
  const hits = Array.from(document.querySelectorAll('li.hit'));
  const at = hits.indexOf(document.activeElement);
  if (event.key === '/') {
    event.preventDefault(); box.focus(); box.select();
  } else if ((event.key === 'j' || event.key === 'ArrowDown') && hits.length) {
    event.preventDefault(); hits[Math.min(at + 1, hits.length - 1)].focus();
  } else if ((event.key === 'k' || event.key === 'ArrowUp') && hits.length) {
    event.preventDefault(); hits[Math.max(at - 1, 0)].focus();
  } else if (event.key === 'Enter' && at >= 0) {
    const link = hits[at].querySelector('a.location');
    if (link) link.click();
  }
});
"""


@dataclass(frozen=True)
class Form:
    """What the page was asked (its query string); "" for what was not given."""

    query: str = ""
    mode: str = ""
    language: str = ""


def add_page(
    app: FastAPI,
    search: Callable[..., Awaitable[JSONResponse | dict]],
    bundle_and_state: Callable[[], tuple[dict | None, str]],
) -> None:
    """GET / on ``app``. ``search(location, field, query, k, language, mode)`` is the app's search (a dict,
    or a JSONResponse refusal); ``bundle_and_state()`` gives Searcher.describe() (None until ready) and the
    service's state."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def search_page(q: str = "", mode: str = "", language: str = "") -> HTMLResponse:
        form = Form(q.strip(), mode, language)
        answer, error, status = None, "", 200
        if form.query:
            result = await search("query", "q", form.query, None, form.language or None, form.mode or None)
            if isinstance(result, JSONResponse):  # a refusal: its message on the page, its status kept
                status = result.status_code
                error = json.loads(result.body)["detail"][0]["msg"]
            else:
                answer = result
        bundle, state = bundle_and_state()
        nonce = new_nonce()
        text = render(form, bundle, answer, error, nonce, state)
        return HTMLResponse(text, status_code=status, headers={"Content-Security-Policy": policy(nonce)})


def policy(nonce: str) -> str:
    """The Content-Security-Policy of a page whose one style and one script carry ``nonce``."""
    return (
        f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; img-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def render(form: Form, bundle: dict | None, answer: dict | None, error: str, nonce: str, state: str) -> str:
    """The page: the form (its choices from ``bundle``, Searcher.describe(); None while it loads), then
    ``error`` (a refusal's message) or ``answer``'s results (the /search JSON answer; None: no query yet)."""
    escape = html.escape
    title = f"{form.query} - semcode search" if form.query else "semcode search"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
    ]
    if bundle is None and state == "loading":
        parts.append('<meta http-equiv="refresh" content="2">')  # until the bundle is ready
    parts += [f'<style nonce="{nonce}">{STYLE}{PYGMENTS_CSS}</style>', "</head><body>"]
    parts += ["<header><h1>semcode search</h1>", f'<p class="about">{escape(about(bundle, state))}</p>']
    parts += [search_form(form, bundle), "</header>", "<main>"]
    if error:
        parts.append(f'<p class="error" role="alert">{escape(error)}</p>')
    elif answer is not None:
        parts.append(results(answer))
    else:
        parts.append(
            '<p class="status">Say what the code should do, e.g. <em>read a file line by line</em>. Keys: '
            "<kbd>/</kbd> query, <kbd>j</kbd> <kbd>k</kbd> results, <kbd>Enter</kbd> open.</p>"
        )
    parts += ["</main>", f'<script nonce="{nonce}">{SCRIPT}</script>', "</body></html>"]
    return "\n".join(parts)


def about(bundle: dict | None, state: str) -> str:
    if bundle is None:
        return f"The bundle is {state}." + (
            " This page reloads until it is ready." if state == "loading" else ""
        )
    return f"{bundle['name']} {bundle['version']}: {bundle['functions']:,} functions"


def search_form(form: Form, bundle: dict | None) -> str:
    escape = html.escape
    modes = list(bundle["modes"]) if bundle else []
    languages = dict(bundle["languages"]) if bundle else {}
    default_mode = bundle["default_mode"] if bundle else ""
    mode_options = "".join(
        f'<option value="{escape(mode)}"{" selected" if mode == (form.mode or default_mode) else ""}>'
        f"{escape(mode)}{' (default)' if mode == default_mode else ''}</option>"
        for mode in modes
    )
    language_options = '<option value="">every language</option>' + "".join(
        f'<option value="{escape(name)}"{" selected" if name == form.language else ""}>'
        f"{escape(name)} ({count:,})</option>"
        for name, count in languages.items()
    )
    return (
        '<form method="get" action="/" role="search">'
        '<label for="q">Query<input id="q" name="q" type="search" autofocus autocomplete="off" '
        f'placeholder="what should the code do?" value="{escape(form.query)}"></label>'
        f'<label for="mode">Mode<select id="mode" name="mode">{mode_options}</select></label>'
        f'<label for="language">Language<select id="language" name="language">{language_options}</select>'
        '</label><button type="submit">Search</button></form>'
    )


def results(answer: dict) -> str:
    hits = answer["results"]
    where = f" in {', '.join(answer['language'])}" if answer.get("language") else ""
    summary = (
        f'<p class="status" id="summary">{len(hits)} result{"s" if len(hits) != 1 else ""}{html.escape(where)}, '
        f"{html.escape(answer['mode'])}, {answer['took_ms']:.0f} ms</p>"
    )
    return summary + '<ol class="results">' + "".join(result(hit) for hit in hits) + "</ol>"


def result(hit: dict) -> str:
    """One result: ``li.hit`` with .location, .language, .score, .signature, .doc and the code's ``pre``."""
    escape = html.escape
    location = escape(hit["location"])
    link = hit.get("link") or ""
    if link.startswith(("https://", "http://")):
        location = f'<a class="location" href="{escape(link)}">{location}</a>'
    else:
        location = f'<span class="location">{location}</span>'
    formatter = HtmlFormatter(nowrap=True)
    code, hidden = shown_lines(hit["code"], MAX_LINES)
    parts = [
        f'<li class="hit" tabindex="0"><div class="head"><span class="rank">{hit["rank"]}.</span>{location}',
        f'<span class="language">{escape(hit["language"] or "?")}</span>',
        f'<span class="score">{hit["score"]:.4f}</span></div>',
    ]
    if hit.get("signature"):
        signature = highlight(hit["signature"], hit["path"], formatter)
        parts.append(f'<p class="signature {CODE_CLASS}">{signature}</p>')
    if hit.get("doc"):
        parts.append(f'<p class="doc">{escape(hit["doc"])}</p>')
    parts.append(f'<pre class="{CODE_CLASS}"><code>{highlight(code, hit["path"], formatter)}</code></pre>')
    if hidden:
        parts.append(f'<p class="more">... {hidden} more line{"s" if hidden != 1 else ""}</p>')
    parts.append("</li>")
    return "".join(parts)
