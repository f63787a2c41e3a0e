"""See what the loss sees: a row's tokens coloured by role, with their weights (terminal, HTML, JSON).

Each token's text is exactly the characters it covers in the rendered row (multi-byte characters split over
several byte-level tokens go to the first of them), so the texts concatenate to the row.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from wit_plugin.roles import TRAINABLE_ROLES, Role, RoleWeights
from wit_plugin.tagging import TaggedSequence

# One colour per role; weight-0 tokens are dimmed so "what is trained" reads at a glance.
ROLE_COLOURS: dict[Role, str] = {
    Role.TEMPLATE: "#6c757d",
    Role.SYSTEM: "#6f42c1",
    Role.INSTRUCTION: "#0d6efd",
    Role.RESPONSE: "#198754",
    Role.EOT: "#fd7e14",
    Role.REASONING: "#20c997",
    Role.PAD: "#adb5bd",
}
NEVER_TARGET = "the first token of a row is never a target: nothing before it predicts it"
TARGETS_HEADER = "trained (weight > 0)"  # tokens the loss counts: weight > 0, never a row's first token


@dataclass(frozen=True)
class InspectedToken:
    token_id: int
    text: str
    role: Role
    weight: float  # what the loss gives it as a target: role weight × message weight (0 for the first token)
    multiplier: float = 1.0  # its message's weight (from the data)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.token_id, "text": self.text, "role": self.role.label, "weight": self.weight}


def inspect_tokens(tagged: TaggedSequence, weights: RoleWeights) -> list[InspectedToken]:
    """Each token with its text, role and final loss weight as a target (its role's weight × its multiplier from
    the data, a message's weight)."""
    table = weights.by_code()
    multipliers = tagged.token_multipliers().tolist()
    return [
        InspectedToken(token_id, text, Role(role), 0.0 if index == 0 else table[role] * multiplier, multiplier)
        for index, (token_id, role, text, multiplier) in enumerate(
            zip(tagged.input_ids, tagged.roles, tagged.token_texts(), multipliers)
        )
    ]


def _summary_rows(tokens: list[InspectedToken], weights: RoleWeights) -> list[tuple[str, str, str, str]]:
    """Per role: weight (the role's, × its messages' weights from the data where any is not 1: what is trained),
    tokens, and tokens the loss trains (weight > 0; the row's first token has weight 0)."""
    rows = []
    for role in TRAINABLE_ROLES:
        count = sum(t.role is role for t in tokens)
        targets = sum(t.role is role and t.weight > 0 for t in tokens)
        weight = f"{getattr(weights, role.label):g}"
        multipliers = sorted({t.multiplier for t in tokens[1:] if t.role is role})
        if getattr(weights, role.label) > 0 and multipliers and multipliers != [1.0]:
            shown = multipliers if len(multipliers) <= 4 else [multipliers[0], multipliers[-1]]
            weight += f" × message {('–' if len(shown) < len(multipliers) else '/').join(f'{m:g}' for m in shown)}"
        rows.append((role.label, weight, str(count), str(targets)))
    return rows


def render_rich(tokens: list[InspectedToken], weights: RoleWeights) -> Group:
    """Coloured tokens (underlined where trained) and a legend table of roles, weights and counts."""
    text = Text()
    for token in tokens:
        style = f"{ROLE_COLOURS[token.role]}" + (" underline" if token.weight > 0 else " dim")
        text.append(token.text.replace("\n", "⏎\n"), style=style)
    legend = Table(title="roles", show_edge=False)
    for column in ("role", "weight", "tokens", TARGETS_HEADER):
        legend.add_column(column)
    for label, weight, count, targets in _summary_rows(tokens, weights):
        legend.add_row(Text(label, style=ROLE_COLOURS[Role[label.upper()]]), weight, count, targets)
    return Group(text, Text(""), legend, Text(NEVER_TARGET, style="dim"))


def render_table(tokens: list[InspectedToken]) -> Table:
    """One line per token, like ``axolotl preprocess --debug`` but with roles and weights."""
    table = Table(show_edge=False)
    for column in ("#", "id", "token", "role", "weight"):
        table.add_column(column)
    for index, token in enumerate(tokens):
        colour = ROLE_COLOURS[token.role]
        note = " (never a target)" if index == 0 else ""
        table.add_row(
            str(index),
            str(token.token_id),
            repr(token.text),
            Text(token.role.label, style=colour),
            f"{token.weight:g}{note}",
        )
    return table


def render_html(sections: list[tuple[str, list[InspectedToken]]], weights: RoleWeights) -> str:
    """A standalone page, one section per row: tokens coloured by role, trained ones underlined, details on
    hover, and a legend of roles, weights and counts."""
    body = "".join(_html_section(title, tokens, weights) for title, tokens in sections)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>wit inspect</title><style>"
        "body{font-family:sans-serif;margin:2em} .text{font-family:monospace;white-space:pre-wrap;line-height:1.9}"
        ".tok{padding:1px 0;margin-right:1px;border-radius:2px} table{border-collapse:collapse;margin-top:1.5em}"
        "td,th{padding:4px 12px;border-bottom:1px solid #ddd;text-align:left}</style></head><body>"
        f"{body}<p>Underlined tokens are trained (weight &gt; 0); faded ones are not; {html.escape(NEVER_TARGET)}. "
        "Hover a token for details.</p></body></html>"
    )


def _html_section(title: str, tokens: list[InspectedToken], weights: RoleWeights) -> str:
    spans = []
    for index, token in enumerate(tokens):
        colour = ROLE_COLOURS[token.role]
        opacity = "1" if token.weight > 0 else "0.45"
        decoration = "underline" if token.weight > 0 else "none"
        tooltip = f"#{index} id={token.token_id} role={token.role.label} weight={token.weight:g}"
        text = html.escape(token.text).replace("\n", "⏎<br>")
        spans.append(
            f'<span class="tok" title="{html.escape(tooltip)}" style="background:{colour}33;'
            f'border-bottom:2px solid {colour};opacity:{opacity};text-decoration:{decoration}">{text}</span>'
        )
    legend = "".join(
        f'<tr><td><span class="tok" style="background:{ROLE_COLOURS[Role[label.upper()]]}33">{label}</span></td>'
        f"<td>{weight}</td><td>{count}</td><td>{targets}</td></tr>"
        for label, weight, count, targets in _summary_rows(tokens, weights)
    )
    return (
        f"<h2>{html.escape(title)}</h2><div class='text'>{''.join(spans)}</div>"
        f"<table><tr><th>role</th><th>weight</th><th>tokens</th><th>{TARGETS_HEADER}</th></tr>{legend}</table>"
    )
