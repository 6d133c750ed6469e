"""RecurrentGPT's step (Zhou et al., arXiv 2305.13304) on durable text memory, with any LLM backend.

RecurrentGPT runs an LSTM in language: at step t the model reads the last paragraph x_{t-1}, the
short-term memory h_{t-1} (a running summary kept in the prompt), the long-term memories related to what
comes next (earlier paragraphs, retrieved by embedding similarity) and the chosen plan p_t, and writes

    x_t, h_t, (p_{t+1}^1, p_{t+1}^2, p_{t+1}^3) = LLM(x_{t-1}, h_{t-1}, retrieve(x_{t-1}, p_t), p_t)

the next paragraph, the updated short-term memory and three candidate plans. Here every part lives in a
:class:`memlm.textmem.TextMemory`: paragraphs are long-term items (embedded once), the short-term memory is
an item whose every earlier version stays in its history, the plans and the step count are the store's
state, and each step is committed in one transaction, so a stopped or killed session resumes where its last
finished step left it. A person may choose or rewrite the plan and edit any memory between steps; the next
step reads the edited texts.

The prompts are the files in ``memlm/textmem/templates`` (``templates=DIR`` uses others with the same
placeholders). An answer that does not parse is asked again, with the reason, at most ``max_retries`` times;
then :class:`WriterError` says what was missing and shows the answer. The short-term memory is kept under
``memory_words`` words: a longer one is sent back to be shortened, and if it is still too long its oldest
sentences move to long-term memory (kind ``"summary"``) rather than being dropped.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from memlm.textmem.backends import LLMBackend, TextCallback
from memlm.textmem.store import TextMemory

TEMPLATES = Path(__file__).parent / "templates"
STATE_KEY = "writer"
SECTION = re.compile(r"^\s*[*#]*\s*(Paragraph|Memory|Plan [123])\s*[*]*\s*:\s*[*]*", re.IGNORECASE | re.MULTILINE)


class WriterError(RuntimeError):
    """The backend's answers could not be used (the message says why and shows the last answer)."""


@dataclass
class StepResult:
    """What one step wrote: the paragraph (and its id in the store), the new short-term memory, the plan
    the step followed and the three plans proposed for the next step."""

    step: int
    paragraph: str
    paragraph_id: int
    short_term: str
    plan: str
    plans: list[str]


def parse_sections(text: str, wanted: tuple[str, ...]) -> dict[str, str]:
    """``{"Paragraph": ..., "Memory": ..., "Plan 1": ...}`` from an answer laid out as in the templates.

    Headers match case-insensitively, with optional Markdown emphasis (``**Plan 1:**``). Raises ValueError
    naming the sections that are missing or empty.
    """
    found = list(SECTION.finditer(text))
    sections: dict[str, str] = {}
    for match, following in zip(found, [*found[1:], None], strict=False):
        name = match.group(1).capitalize()
        body = text[match.end() : following.start() if following else len(text)].strip()
        sections.setdefault(name, body)
    missing = [name for name in wanted if not sections.get(name)]
    if missing:
        raise ValueError(f"the answer has no (or an empty) {', '.join(repr(m + ':') for m in missing)} section")
    return {name: sections[name] for name in wanted}


def word_count(text: str) -> int:
    return len(text.split())


class RecurrentWriter:
    """The RecurrentGPT loop on a :class:`TextMemory` (see the module notes).

    Args:
        memory: the store (its scope holds one story).
        backend: the LLM (:mod:`memlm.textmem.backends`).
        memory_words: budget of the short-term memory, in words (``count`` gives another measure).
        retrieve_k: long-term paragraphs put in each step's prompt.
        max_retries: asks after the first for an answer that parses.
        chooser: how :meth:`step` picks a plan when none is given: ``"first"``, ``"model"`` (the backend
            answers with a number) or a function ``(plans) -> index``.
        max_new_tokens: generation budget of each call.
        templates: a folder with ``start.txt``, ``step.txt``, ``choose.txt`` and ``shorten.txt``.
        count: the short-term budget's measure (default: words).
    """

    def __init__(self, memory: TextMemory, backend: LLMBackend, memory_words: int = 200, retrieve_k: int = 2,
                 max_retries: int = 2, chooser: str | Callable[[list[str]], int] = "first",
                 max_new_tokens: int = 1024, templates: str | Path | None = None,
                 count: Callable[[str], int] = word_count):
        for name, value, low in (("memory_words", memory_words, 1), ("retrieve_k", retrieve_k, 0),
                                 ("max_retries", max_retries, 0), ("max_new_tokens", max_new_tokens, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not callable(chooser) and chooser not in ("first", "model"):
            raise ValueError(f"chooser must be 'first', 'model' or a function of the plans, got {chooser!r}")
        folder = Path(templates) if templates is not None else TEMPLATES
        names = ("start", "step", "choose", "shorten")
        missing = [f"{name}.txt" for name in names if not (folder / f"{name}.txt").is_file()]
        if missing:
            raise FileNotFoundError(f"templates folder {str(folder)!r} lacks {missing}")
        self.templates = {name: (folder / f"{name}.txt").read_text() for name in names}
        self.memory, self.backend = memory, backend
        self.memory_words, self.retrieve_k, self.max_retries = memory_words, retrieve_k, max_retries
        self.chooser, self.max_new_tokens, self.count = chooser, max_new_tokens, count

    # ------------------------------------------------------------------------------------------------ state
    @property
    def state(self) -> dict | None:
        """``{"step", "premise", "paragraph_id", "short_term_id", "plans"}``, or None before :meth:`start`."""
        return self.memory.get_state(STATE_KEY)

    @property
    def started(self) -> bool:
        return self.state is not None

    def short_term(self) -> str:
        return self.memory.get(self._require_state()["short_term_id"]).text

    def plans(self) -> list[str]:
        return list(self._require_state()["plans"])

    def paragraphs(self) -> list[str]:
        """The story so far, in order (with every edit applied)."""
        return [item.text for item in self.memory.items("paragraph")]

    # ------------------------------------------------------------------------------------------ human edits
    def edit_plan(self, index: int, text: str) -> None:
        """Rewrite plan ``index`` (0, 1 or 2) before choosing it."""
        state = self._require_state()
        if not 0 <= index < len(state["plans"]):
            raise IndexError(f"plan index must be 0..{len(state['plans']) - 1}, got {index}")
        if not text.strip():
            raise ValueError("a plan must be a non-empty string")
        state["plans"][index] = text.strip()
        self.memory.set_state(STATE_KEY, state)

    def edit_short_term(self, text: str) -> None:
        """Replace the short-term memory (the earlier text stays in the item's history)."""
        self.memory.edit(self._require_state()["short_term_id"], text.strip())

    # ------------------------------------------------------------------------------------------------ steps
    def start(self, premise: str, on_text: TextCallback | None = None) -> StepResult:
        """Write the first paragraph, short-term memory and plans from ``premise``."""
        if self.started:
            raise RuntimeError(f"the story in {str(self.memory.path)!r} (scope {self.memory.scope!r}) has already "
                               "started: continue it with step(), or use another store or scope")
        if not isinstance(premise, str) or not premise.strip():
            raise ValueError("premise must be a non-empty string")
        prompt = self.templates["start"].format(premise=premise.strip(), memory_words=self.memory_words)
        answer = self._ask(prompt, ("Paragraph", "Memory", "Plan 1", "Plan 2", "Plan 3"), on_text)
        short_term, overflow = self._fit_short_term(answer["Memory"])
        plans = [answer[f"Plan {i}"] for i in (1, 2, 3)]
        with self.memory.transaction():
            self._store_overflow(overflow)
            self.memory.add(premise.strip(), kind="premise")
            paragraph_id = self.memory.add(answer["Paragraph"], kind="paragraph")
            short_term_id = self.memory.add(short_term, kind="short_term")
            self.memory.set_state(STATE_KEY, {"step": 1, "premise": premise.strip(), "paragraph_id": paragraph_id,
                                              "short_term_id": short_term_id, "plans": plans})
        return StepResult(1, answer["Paragraph"], paragraph_id, short_term, "", plans)

    def step(self, plan: int | str | None = None, on_text: TextCallback | None = None) -> StepResult:
        """Write the next paragraph following ``plan``: an index into :meth:`plans`, a plan of one's own, or
        None (the ``chooser`` picks)."""
        state = self._require_state()
        plan_text = self._resolve_plan(state, plan)
        last = self.memory.get(state["paragraph_id"])
        related = self.memory.search(f"{plan_text}\n{last.text}", k=self.retrieve_k, kind="paragraph",
                                     exclude=(last.id,)) if self.retrieve_k else []
        prompt = self.templates["step"].format(
            short_term=self.short_term(), paragraph=last.text, plan=plan_text, memory_words=self.memory_words,
            related="\n\n".join(item.text for item in related) or "(none yet)",
        )
        answer = self._ask(prompt, ("Paragraph", "Memory", "Plan 1", "Plan 2", "Plan 3"), on_text)
        short_term, overflow = self._fit_short_term(answer["Memory"])
        plans = [answer[f"Plan {i}"] for i in (1, 2, 3)]
        with self.memory.transaction():
            self._store_overflow(overflow)
            self.memory.add(plan_text, kind="plan")
            paragraph_id = self.memory.add(answer["Paragraph"], kind="paragraph")
            self.memory.edit(state["short_term_id"], short_term)
            state.update(step=state["step"] + 1, paragraph_id=paragraph_id, plans=plans)
            self.memory.set_state(STATE_KEY, state)
        return StepResult(state["step"], answer["Paragraph"], paragraph_id, short_term, plan_text, plans)

    def export_markdown(self) -> str:
        """The story as Markdown: the premise as a quote, then the paragraphs in order."""
        state = self._require_state()
        return f"> {state['premise']}\n\n" + "\n\n".join(self.paragraphs()) + "\n"

    # -------------------------------------------------------------------------------------------- internals
    def _require_state(self) -> dict:
        state = self.state
        if state is None:
            raise RuntimeError(f"no story in {str(self.memory.path)!r} (scope {self.memory.scope!r}) yet: "
                               "call start(premise) first")
        return state

    def _resolve_plan(self, state: dict, plan: int | str | None) -> str:
        plans = state["plans"]
        if plan is None:
            plan = self._choose(state)
        if isinstance(plan, bool) or not isinstance(plan, int | str):
            raise TypeError(f"plan must be an index, a text or None, got {plan!r}")
        if isinstance(plan, int):
            if not 0 <= plan < len(plans):
                raise IndexError(f"plan index must be 0..{len(plans) - 1}, got {plan}")
            return plans[plan]
        if not plan.strip():
            raise ValueError("a plan must be a non-empty string")
        return plan.strip()

    def _choose(self, state: dict) -> int:
        plans = state["plans"]
        if callable(self.chooser):
            return self.chooser(list(plans))
        if self.chooser == "first":
            return 0
        prompt = self.templates["choose"].format(
            paragraph=self.memory.get(state["paragraph_id"]).text, short_term=self.short_term(),
            plan_1=plans[0], plan_2=plans[1], plan_3=plans[2])
        for _ in range(self.max_retries + 1):
            answer = self.backend.generate(prompt, max_new_tokens=8)
            digits = re.findall(r"[123]", answer)
            if digits:
                return int(digits[0]) - 1
        return 0

    def _ask(self, prompt: str, wanted: tuple[str, ...], on_text: TextCallback | None) -> dict[str, str]:
        """The parsed answer to ``prompt``, asking again (with the reason) at most ``max_retries`` times."""
        request, answer, reason = prompt, "", ""
        for _ in range(self.max_retries + 1):
            answer = self.backend.generate(request, max_new_tokens=self.max_new_tokens, on_text=on_text)
            try:
                return parse_sections(answer, wanted)
            except ValueError as error:
                reason = str(error)
                request = (f"{prompt}\n\nYour previous answer could not be used: {reason}. Answer again, in exactly "
                           "the format asked.")
        raise WriterError(f"{self.backend.name} gave no usable answer in {self.max_retries + 1} tries ({reason}); "
                          f"last answer:\n{answer[:2000]}")

    def _store_overflow(self, overflow: str | None) -> None:
        if overflow:
            self.memory.add(overflow, kind="summary")

    def _fit_short_term(self, text: str) -> tuple[str, str | None]:
        """``(short-term memory within memory_words, overflow)``: shortened by the backend, else its oldest
        sentences split off as the overflow, which the step stores in long-term memory (kind ``"summary"``)."""
        if self.count(text) <= self.memory_words:
            return text, None
        prompt = self.templates["shorten"].format(short_term=text, memory_words=self.memory_words)
        with contextlib.suppress(WriterError):  # else keep the long text: its overflow goes to long-term memory
            text = self._ask(prompt, ("Memory",), None)["Memory"]
        if self.count(text) <= self.memory_words:
            return text, None
        sentences = re.split(r"(?<=[.!?])\s+", text.strip())
        kept: list[str] = []
        while sentences and self.count(" ".join([sentences[-1], *kept])) <= self.memory_words:
            kept.insert(0, sentences.pop())
        if not kept:  # one sentence longer than the budget: keep its last words
            words = sentences.pop().split()
            kept, sentences = [" ".join(words[-self.memory_words:])], sentences + [" ".join(words[:-self.memory_words])]
        return " ".join(kept), " ".join(sentences) or None
