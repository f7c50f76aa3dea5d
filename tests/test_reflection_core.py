"""Pyramid Reflection without models: retrieval on hand-made embeddings (checked against independent
computations), tolerant JSON reading, parameters, prompt texts, and the loop's control flow with a scripted
backend (accept at round 1/2/3, never accept → caption answer → round fallbacks, failing and broken models)."""
import glob
import math
import os
import re

import numpy as np
import pytest
import torch

from core.reflection import prompts
from core.reflection.backend import BackendError, ChatRequest
from core.reflection.loop import Models, Pool, expected_calls, run, sample_pool
from core.reflection.params import ReflectionParams, parse_sizes
from core.reflection.parsing import (NOT_ENOUGH, extract_json, keyword_question_type, parse_evaluation,
                                     parse_question_type, parse_refinement)
from core.reflection.retrieval import expand, mmr_shrink, pairwise, relevance, select, uniform_indices
from harness.paths import REPO

pytestmark = pytest.mark.host_independent   # never reaches ComfyUI's code: `make test-floor` leaves it out

D = 16


# -- helpers ----------------------------------------------------------------------------------------------------
def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def embeddings_with_relevance(rels, query_axis=0, seed=0):
    """Frame vectors whose cosine with the unit vector on ``query_axis`` is exactly rels[i]."""
    g = np.random.default_rng(seed)
    rows = []
    for r in rels:
        rest = g.normal(size=D)
        rest[query_axis] = 0
        rest = rest / np.linalg.norm(rest) * math.sqrt(1 - r * r)
        rest[query_axis] = r
        rows.append(rest)
    return torch.tensor(np.array(rows), dtype=torch.float32)


def axis(i):
    v = torch.zeros(D)
    v[i] = 1
    return v


def mmr_reference(E, q, candidates, k, lam):
    """Independent greedy MMR in float64 with plain loops: (picks in pick order)."""
    E = np.asarray(E, dtype=np.float64)
    E = E / np.linalg.norm(E, axis=1, keepdims=True)
    q = unit(q)
    picks = []
    while len(picks) < k:
        best, best_score = None, -np.inf
        for i in sorted(candidates):
            if i in picks:
                continue
            rel = float(E[i] @ q)
            score = rel if not picks else lam * rel - (1 - lam) * max(float(E[i] @ E[j]) for j in picks)
            if score > best_score + 1e-12:
                best, best_score = i, score
        picks.append(best)
    return picks


def coloured_frames(n, h=4, w=4):
    """Frame i is filled with the value i/255, so a frame sent to a model tells its pool position."""
    return torch.arange(n, dtype=torch.float32).div(255).view(n, 1, 1, 1).expand(n, h, w, 3).clone()


def positions_of(images):
    return [int(round(float(img[0, 0, 0]) * 255)) for img in images]


class Scripted:
    """A ChatBackend that answers from a script per role: a string, a list (consumed in order, the last one
    repeats), a callable(request), or an exception to raise."""

    def __init__(self, script=None, name="scripted", images=True):
        self.script = dict(script or {})
        self.name = name
        self.supports_images = images
        self.requests: list[ChatRequest] = []

    @property
    def cache_key(self):
        return ("scripted", self.name)

    def chat(self, request):
        self.requests.append(request)
        reply = self.script.get(request.role, "")
        if isinstance(reply, list):
            reply = reply.pop(0) if len(reply) > 1 else reply[0]
        if callable(reply):
            reply = reply(request)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def roles(self):
        return [r.role for r in self.requests]


def ev(score, verdict="reject"):
    return f'{{"score": {score}, "verdict": "{verdict}", "brief_reason": "scripted"}}'


REJECT = ev(0.2)
ACCEPT = ev(0.9, "accept")


def script(evaluations, qtype="static", refinements=None, actor=None, global_reply="From the caption: a bike."):
    counter = iter(range(1000))
    return {
        "router": f'{{"qtype": "{qtype}", "rationale": "scripted"}}',
        "note": "A cyclist on a road.",
        "summary": "A cyclist rides along a road past parked cars.",
        "actor": actor or (lambda req: f"answer {next(counter) + 1}"),
        "evaluator": list(evaluations),
        "reflector": list(refinements or ['{"refined_query": "a red bike on the left side"}']),
        "global": global_reply,
    }


class World:
    """A 64-frame pool with hand-made embeddings: relevance to the question on axis 0, to the refined query on
    axis 1 (different frames), random elsewhere; a text embedder that records what it was asked."""

    def __init__(self, n=64, seed=0):
        g = np.random.default_rng(seed)
        E = g.normal(size=(n, D))
        E[:, 0] = g.uniform(-0.2, 1.0, size=n) * 3
        E[:, 1] = g.uniform(-0.2, 1.0, size=n) * 3
        self.E = torch.tensor(E / np.linalg.norm(E, axis=1, keepdims=True), dtype=torch.float32)
        self.pool = Pool(coloured_frames(n), list(range(0, 2 * n, 2)), total_frames=2 * n, fps=10.0)
        self.texts = []

    def embed_text(self, text):
        self.texts.append(text)
        return axis(1) if text.startswith("a red bike") else axis(0)

    def run(self, backend, params=None, question="What colour is the bike?", text=None, reflector=None, **kw):
        return run(question, self.pool, self.E, self.embed_text, Models.of(backend, text, reflector),
                   params or ReflectionParams(), **kw)


def top_k(scores, k, exclude=()):
    order = [int(i) for i in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable") if int(i) not in exclude]
    return order[:k]


# -- retrieval ----------------------------------------------------------------------------------------------------
def test_uniform_indices():
    assert uniform_indices(250, 64)[:3] == [0, 4, 8] and uniform_indices(250, 64)[-1] == 249
    assert len(set(uniform_indices(250, 64))) == 64
    for total in (64, 65, 100, 127, 1000):
        got = uniform_indices(total, 64)
        assert len(got) == 64 and got == sorted(set(got)) and got[0] == 0 and got[-1] == total - 1
    assert uniform_indices(10, 64) == list(range(10))
    assert uniform_indices(1, 64) == [0]
    assert uniform_indices(64, 16) == [round(k * 63 / 15) for k in range(16)]
    with pytest.raises(ValueError, match="empty video"):
        uniform_indices(0, 64)


def test_expand_adds_the_most_relevant_unseen_frames_in_temporal_order():
    g = np.random.default_rng(3)
    rels = g.permutation(np.linspace(-0.5, 0.95, 64))
    E = embeddings_with_relevance(rels)
    rel = relevance(E, axis(0))
    np.testing.assert_allclose(rel.numpy(), rels, atol=1e-5)
    first = expand(rel, [], 4)
    assert first == sorted(top_k(rels, 4))
    # round 2 with another search text: keeps round 1 and adds the 4 best unseen for the new text
    rels2 = g.permutation(np.linspace(-0.5, 0.95, 64))
    rel2 = relevance(embeddings_with_relevance(rels2), axis(0))
    second = expand(rel2, first, 8)
    assert set(first) < set(second) and len(second) == 8 and second == sorted(second)
    assert set(second) - set(first) == set(top_k(rels2, 4, exclude=first))
    third = expand(rel2, second, 16)
    assert set(third) - set(second) == set(top_k(rels2, 8, exclude=second)) and third == sorted(third)
    assert expand(rel2, third, 8) == third  # already big enough: unchanged


def test_expand_ties_go_to_the_earlier_frame():
    rel = torch.tensor([0.1, 0.5, 0.5, 0.5, 0.2])
    assert expand(rel, [], 2) == [1, 2]


@pytest.mark.parametrize("seed", range(5))
def test_mmr_matches_an_independent_computation(seed):
    g = np.random.default_rng(seed)
    E = g.normal(size=(64, D))
    q = g.normal(size=D)
    ours_rel = relevance(torch.tensor(E, dtype=torch.float32), torch.tensor(q, dtype=torch.float32))
    sim = pairwise(torch.tensor(E, dtype=torch.float32))
    for lam in (0.5, 0.2, 0.8):
        want32 = mmr_reference(E, q, range(64), 32, lam)
        got32 = mmr_shrink(ours_rel, sim, list(range(64)), 32, lam)
        assert got32 == sorted(want32)
        want16 = mmr_reference(E, q, want32, 16, lam)
        assert mmr_shrink(ours_rel, sim, got32, 16, lam) == sorted(want16)
    # first pick is pure relevance; λ = 1 is plain top-k
    assert mmr_reference(E, q, range(64), 1, 0.5)[0] == int(np.argmax(E @ q / np.linalg.norm(E, axis=1)))
    assert mmr_shrink(ours_rel, sim, list(range(64)), 10, 1.0) == sorted(top_k(ours_rel.numpy(), 10))


def test_mmr_prefers_diverse_frames_over_near_duplicates():
    """Frames 0–9 are near-copies of one very relevant shot, 10–19 of a second shot, 20–29 of a third; top-k by
    relevance alone takes only the first shot, MMR (λ = 0.5) spreads over shots."""
    g = np.random.default_rng(0)
    shots = [unit([0.95, 0.3] + [0] * (D - 2)), unit([0.6, 0, 0.8] + [0] * (D - 3)),
             unit([0.5, 0, 0, 0.86] + [0] * (D - 4))]
    E = np.array([shots[i // 10] + g.normal(scale=0.01, size=D) for i in range(30)])
    Et = torch.tensor(E, dtype=torch.float32)
    rel, sim = relevance(Et, axis(0)), pairwise(Et)
    assert {i // 10 for i in top_k(rel.numpy(), 3)} == {0}
    picked = mmr_shrink(rel, sim, list(range(30)), 3, 0.5)
    assert {i // 10 for i in picked} == {0, 1, 2}
    assert picked == sorted(mmr_reference(E, axis(0).numpy(), range(30), 3, 0.5))


def test_select_modes():
    w = World()
    rel, sim = relevance(w.E, axis(0)), pairwise(w.E)
    assert select("dynamic", rel, sim, [], 64, 0.5) == list(range(64))  # round 1 keeps the whole pool
    assert select("dynamic", rel, sim, [], 32, 0.5) == sorted(mmr_reference(w.E.numpy(), axis(0).numpy(),
                                                                            range(64), 32, 0.5))
    assert select("static", rel, sim, [], 4, 0.5) == sorted(top_k(rel.numpy(), 4))
    with pytest.raises(ValueError, match="'static' or 'dynamic'"):
        select("both", rel, sim, [], 4, 0.5)


# -- parsing ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    '{"score": 0.8, "verdict": "accept", "brief_reason": "ok"}',
    '```json\n{"score": 0.8, "verdict": "accept", "brief_reason": "ok"}\n```',
    'Sure! Here is my evaluation: {"score": 0.8, "verdict": "accept", "brief_reason": "ok"} Hope it helps.',
    "{'score': 0.8, 'verdict': 'accept', 'brief_reason': 'ok'}",
    '{"score": 0.8, "verdict": "accept", "brief_reason": "ok",}',
    '“score”: 0.8, “verdict”: “accept”',
    'score: 80%, verdict: Accept',
])
def test_evaluation_read_tolerantly(text):
    e = parse_evaluation(text)
    assert e.readable and e.score == pytest.approx(0.8) and e.verdict == "accept" and e.accepted(0.7)


@pytest.mark.parametrize("text", [
    '{"score": 5}',                                                   # 5 of 10: once clamped to 1 and accepted
    '{"score": 8, "verdict": "accept", "brief_reason": "8/10"}',      # a verdict beside it is not trusted either
    '{"score": "9/10"}', '{"score": -2, "verdict": "reject"}', '{"score": 1.5}', "score: 150%", "Score = 7",
])
def test_evaluation_score_outside_0_1_is_unreadable_and_never_accepts(text):
    e = parse_evaluation(text)
    assert not e.readable and not e.accepted(0.7) and not e.accepted(0.01)
    assert e.score == 0.0 and e.verdict == "reject" and "is outside 0–1" in e.brief_reason


def test_evaluation_fallbacks():
    broken = parse_evaluation('{"score": , "verdict" ')
    assert not broken.readable and broken.score == 0.0 and broken.verdict == "reject" and not broken.accepted(0.7)
    assert "could not be read" in broken.brief_reason
    assert not parse_evaluation("").readable and not parse_evaluation(None).readable
    high = parse_evaluation('{"score": 0.75, "verdict": "reject"}')
    assert high.accepted(0.7) and not high.accepted(0.8)  # score ≥ τ accepts whatever the verdict
    low = parse_evaluation('{"score": 0.1, "verdict": "accept"}')
    assert low.accepted(0.7)  # so does an accept verdict
    only_score = parse_evaluation('{"score": "0.9"}')
    assert only_score.verdict == "reject" and only_score.accepted(0.7)
    assert parse_evaluation('{"score": "n/a", "verdict": "maybe"}').readable is False
    assert parse_evaluation('{"score": 0.5, "brief_reason": ["a", "b"]}').brief_reason == "a; b"


def test_question_type_and_refinement_reading():
    assert parse_question_type('{"qtype": "dynamic", "rationale": "counting"}') == "dynamic"
    assert parse_question_type('```\n{"qtype":"Static"}\n```') == "static"
    assert parse_question_type('The answer is "Dynamic"') == "dynamic"
    assert parse_question_type("qtype = static because…") == "static"
    assert parse_question_type("static or dynamic, hard to say") is None
    assert parse_question_type("garbage ��") is None
    assert keyword_question_type("How many times does the dog jump?") == "dynamic"
    assert keyword_question_type("What happens after the car stops?") == "dynamic"
    assert keyword_question_type("What colour is the car?") == "static"

    assert parse_refinement('{"refined_query": "A red car passes the cyclist on the left."}') == (
        "A red car passes the cyclist on the left.", True)
    long = " ".join(f"w{i}" for i in range(40))
    assert parse_refinement(f'{{"refined_query": "{long}"}}')[0].split() == [f"w{i}" for i in range(25)]
    assert parse_refinement('{"refined_query": ""}') == ("", True)
    assert parse_refinement('refined_query: "blue bike near the tree" and more') == ("blue bike near the tree", True)
    assert parse_refinement("I think we should look at the bike") == ("", False)
    assert parse_refinement('{"refined_query": 42}') == ("", True)
    assert extract_json("no braces") is None and extract_json('[1, 2]') is None
    assert extract_json('x {"a": {"b": "}"}} y') == {"a": {"b": "}"}}


def test_parse_sizes_and_params():
    assert parse_sizes("s", "4, 8, 16", True) == (4, 8, 16)
    assert parse_sizes("s", "64 → 32 → 16", False) == (64, 32, 16)
    for text, message in [("", "at least one"), ("4, eight", "whole numbers"), ("4, 0", "at least 1"),
                          ("8, 4", "must not decrease")]:
        with pytest.raises(ValueError, match=message):
            parse_sizes("static_sizes", text, True)
    with pytest.raises(ValueError, match="must not increase"):
        parse_sizes("dynamic_sizes", "16, 32", False)
    p = ReflectionParams()
    assert (p.pool_size, p.caption_frames, p.static_sizes, p.dynamic_sizes) == (64, 16, (4, 8, 16), (64, 32, 16))
    assert (p.mmr_lambda, p.accept_threshold, p.max_rounds) == (0.5, 0.7, 3)
    assert [p.round_size("static", r, 64) for r in range(4)] == [4, 8, 16, 16]
    assert [p.round_size("dynamic", r, 20) for r in range(3)] == [20, 20, 16]
    with pytest.raises(ValueError, match="question_type"):
        ReflectionParams(question_type="both")
    with pytest.raises(ValueError, match="mmr_lambda"):
        ReflectionParams(mmr_lambda=1.5)


# -- prompts ------------------------------------------------------------------------------------------------------
def all_prompts():
    return [prompts.question_type("Q?"), prompts.frame_note(), prompts.caption_summary(["n1", "n2"]),
            prompts.actor("Q?", "C.", ["frame 0 at 0.00 s", "frame 9 at 0.90 s"]),
            prompts.evaluator("Q?", "C.", "A.", "2 frames", 0.7),
            prompts.reflector("Q?", "C.", "S.", "A.", {"score": 0.1}, 0.7), prompts.global_answer("Q?", "C.")]


def test_prompts_carry_the_instructions():
    router, note, summary, actor, evaluator, reflector, global_ = [s + "\n" + u for s, u in all_prompts()]
    assert '"qtype"' in router and "static" in router and "dynamic" in router and "JSON" in router
    assert "single" in note or "one frame" in note
    assert "1. n1" in summary and "2. n2" in summary and "earliest first" in summary
    assert "Image 1: frame 0 at 0.00 s" in actor and "Image 2: frame 9" in actor and "earliest first" in actor
    assert all(k in evaluator for k in ('"score"', '"verdict"', '"brief_reason"', "0.7", "Example"))
    assert '"refined_query"' in reflector and "25 words" in reflector and "S." in reflector
    assert NOT_ENOUGH in global_


def paper_text():
    for root in (os.path.join(os.path.dirname(REPO), "shared"), "/work/shared"):
        files = glob.glob(os.path.join(root, "papers", "002_*.txt"))
        if files:
            with open(files[0], encoding="utf-8") as f:
                return f.read()
    return None


def test_prompts_are_our_own_wording():
    """No run of 7 words of the paper's prompt appendix (A.5) appears in our prompts."""
    paper = paper_text()
    if paper is None:
        pytest.skip("the paper text (shared/papers) is not beside the repository")
    appendix = paper[paper.index("## A.5"):paper.index("A.6 Pyramid Reflection")]

    def words(text):
        return re.findall(r"[a-z0-9]+", text.lower())

    def runs(ws, n=7):
        return {" ".join(ws[i:i + n]) for i in range(len(ws) - n + 1)}
    theirs = runs(words(appendix))
    for system, user in all_prompts():
        shared = runs(words(system + " " + user)) & theirs
        assert not shared, shared


# -- the loop with a scripted backend ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["static", "dynamic"])
@pytest.mark.parametrize("accept_round", [1, 2, 3])
def test_accept_at_round(mode, accept_round):
    w = World()
    evaluations = [REJECT] * (accept_round - 1) + [ACCEPT]
    backend = Scripted(script(evaluations, qtype=mode))
    result = w.run(backend)
    trace = result.trace
    assert trace["mode"] == mode and trace["mode_source"] == "router"
    assert len(trace["rounds"]) == accept_round
    assert result.answer == f"answer {accept_round}"
    assert trace["final"]["source"] == f"round {accept_round} (accepted)"
    sizes = [len(r["frames"]) for r in trace["rounds"]]
    assert sizes == ([4, 8, 16] if mode == "static" else [64, 32, 16])[:accept_round]
    assert [r["mode"] for r in trace["rounds"]] == [{"static": "expand", "dynamic": "shrink"}[mode]] * accept_round
    assert [r["accepted"] for r in trace["rounds"]] == [False] * (accept_round - 1) + [True]
    assert [r["verdict"] for r in trace["rounds"]][-1] == "accept"
    # no Reflector after the accepted round; one per rejected round
    assert backend.roles().count("reflector") == accept_round - 1
    assert trace["cost"]["llm_calls"]["actor"] == accept_round and "global" not in trace["cost"]["llm_calls"]
    # the Actor saw each working set in temporal order, and the keyframes are the accepted set
    actor_requests = [r for r in backend.requests if r.role == "actor"]
    for request, record in zip(actor_requests, trace["rounds"]):
        shown = positions_of(request.images)
        assert shown == sorted(shown) and [w.pool.frame_ids[p] for p in shown] == record["frames"]
    assert w.pool.ids(result.keyframes) == trace["rounds"][-1]["frames"] == trace["final"]["keyframes"]
    assert trace["cost"]["images_to_actor"] == sum(sizes)


def test_static_rounds_expand_with_the_refined_search_text():
    w = World()
    backend = Scripted(script([REJECT, REJECT, REJECT], qtype="static"))
    trace = w.run(backend).trace
    rel_q, rel_r = relevance(w.E, axis(0)).numpy(), relevance(w.E, axis(1)).numpy()
    r1, r2, r3 = [[w.pool.frame_ids.index(f) for f in r["frames"]] for r in trace["rounds"]]
    assert r1 == sorted(top_k(rel_q, 4))
    assert set(r2) - set(r1) == set(top_k(rel_r, 4, exclude=r1))       # refined text drives round 2
    assert set(r3) - set(r2) == set(top_k(rel_r, 8, exclude=r2))
    assert [r["search_text"] for r in trace["rounds"]] == ["What colour is the bike?"] + \
        ["a red bike on the left side"] * 2
    assert trace["rounds"][0]["refined_query"] == "a red bike on the left side"
    assert trace["rounds"][2]["refined_query"] is None  # no Reflector after the last round


def test_dynamic_rounds_shrink_by_mmr_from_the_whole_pool():
    w = World()
    backend = Scripted(script([REJECT, REJECT, REJECT], qtype="dynamic",
                              refinements=['{"refined_query": ""}', '{"refined_query": "a red bike turning"}']))
    trace = w.run(backend, question="What happens after the bike turns?").trace
    r1, r2, r3 = [[w.pool.frame_ids.index(f) for f in r["frames"]] for r in trace["rounds"]]
    assert r1 == list(range(64))
    E, q0, q1 = w.E.numpy(), axis(0).numpy(), axis(1).numpy()
    # round 2: empty refinement → still the question; round 3: the refined text, pruning round 2's set
    assert r2 == sorted(mmr_reference(E, q0, range(64), 32, 0.5))
    assert r3 == sorted(mmr_reference(E, q1, r2, 16, 0.5))
    assert [r["search_text"] for r in trace["rounds"]] == ["What happens after the bike turns?"] * 2 + \
        ["a red bike turning"]


def test_never_accepted_answers_from_the_global_caption():
    w = World()
    backend = Scripted(script([REJECT] * 3, global_reply="A cyclist in a red jacket."))
    result = w.run(backend)
    assert result.answer == "A cyclist in a red jacket."
    assert result.trace["final"]["source"] == "global caption (no round accepted)"
    assert result.trace["global_answer"] == "A cyclist in a red jacket."
    assert result.keyframes == uniform_indices(64, 16)  # the caption's seed frames
    assert backend.roles()[-1] == "global" and backend.roles().count("reflector") == 2


@pytest.mark.parametrize("mode, fallback_round", [("static", 3), ("dynamic", 1)])
@pytest.mark.parametrize("global_reply", [NOT_ENOUGH, "not enough evidence from the global caption, sorry",
                                          "", BackendError("HTTP 500")])
def test_caption_cannot_answer_falls_back_to_a_round(mode, fallback_round, global_reply):
    w = World()
    backend = Scripted(script([REJECT] * 3, qtype=mode, global_reply=global_reply))
    result = w.run(backend)
    assert result.answer == f"answer {fallback_round}"
    assert result.trace["final"]["source"].startswith(f"fallback: round {fallback_round} ")
    assert w.pool.ids(result.keyframes) == result.trace["rounds"][fallback_round - 1]["frames"]
    if isinstance(global_reply, Exception):
        assert result.trace["errors"] == [{"role": "global", "backend": "scripted", "error": "HTTP 500"}]


def test_empty_round_answers_are_skipped_by_the_fallback():
    w = World()
    answers = iter(["", "answer two", ""])
    backend = Scripted(script([REJECT] * 3, qtype="static", actor=lambda r: next(answers), global_reply=NOT_ENOUGH))
    assert w.run(backend).answer == "answer two"
    answers = iter(["", "", ""])
    backend = Scripted(script([REJECT] * 3, qtype="static", actor=lambda r: next(answers), global_reply=NOT_ENOUGH))
    result = w.run(backend)
    assert result.answer == NOT_ENOUGH and result.source.startswith("no usable answer")


def test_broken_json_everywhere_still_completes_with_a_trace():
    w = World()
    garbage = "��\x08 score score {verdict"
    backend = Scripted({"router": garbage, "note": garbage, "summary": garbage, "actor": garbage,
                        "evaluator": garbage, "reflector": garbage, "global": garbage})
    result = w.run(backend, question="How many times does the bike pass?")
    trace = result.trace
    assert trace["mode"] == "dynamic" and trace["mode_source"] == "keywords (router reply unreadable)"
    assert len(trace["rounds"]) == 3
    assert all(not r["evaluation_readable"] and r["verdict"] == "reject" and r["score"] == 0.0
               for r in trace["rounds"])
    assert all(not r["refinement_readable"] for r in trace["rounds"][:2])
    assert {r["search_text"] for r in trace["rounds"]} == {"How many times does the bike pass?"}
    assert result.answer == garbage.strip() and trace["final"]["source"].startswith("global caption")


def test_out_of_range_scores_are_rejected_and_traced_as_unreadable():
    w = World()
    reply = '{"score": 8, "brief_reason": "8 out of 10"}'   # another scale: 8 would have been clamped to 1, accepted
    result = w.run(Scripted(script([reply] * 3)))
    rounds = result.trace["rounds"]
    assert len(rounds) == 3 and not any(r["accepted"] for r in rounds)
    assert all(not r["evaluation_readable"] and r["score"] == 0.0 and r["verdict"] == "reject" for r in rounds)
    assert all("evaluator score 8 is outside 0–1" in r["brief_reason"] and r["evaluator_reply"] == reply
               for r in rounds)
    assert result.source == "global caption (no round accepted)"


def test_text_backend_failures_fall_back_and_are_traced():
    w = World()
    vision = Scripted(script([ACCEPT]), name="vlm")
    failing = Scripted({role: BackendError(f"{role} down") for role in
                        ("router", "summary", "evaluator", "reflector", "global")}, name="llm", images=False)
    result = w.run(vision, text=failing, question="What colour is the bike?")
    trace = result.trace
    assert trace["mode"] == "static" and trace["mode_source"] == "keywords (router call failed)"
    assert trace["caption_from"] == "joined frame notes (summary failed)"
    assert trace["global_caption"].startswith("A cyclist on a road.")
    assert [r["brief_reason"] for r in trace["rounds"]] == ["evaluator call failed"] * 3
    assert result.source.startswith("fallback: round 3")
    assert {e["role"] for e in trace["errors"]} == {"router", "summary", "evaluator", "reflector", "global"}
    assert all(e["backend"] == "llm" for e in trace["errors"])
    assert vision.roles().count("actor") == 3 and "evaluator" not in vision.roles()


def test_roles_go_to_their_backends():
    w = World()
    vision = Scripted(script([ACCEPT]), name="vlm")
    text = Scripted(script([REJECT, REJECT, ACCEPT]), name="llm", images=False)
    reflector = Scripted(script([]), name="reflector", images=False)
    w.run(vision, text=text, reflector=reflector)
    assert set(vision.roles()) == {"note", "actor"}
    assert set(text.roles()) == {"summary", "router", "evaluator"}
    assert set(reflector.roles()) == {"reflector"}
    assert all(not r.images for r in text.requests + reflector.requests)
    assert all(len(r.images) == 1 for r in vision.requests if r.role == "note")


def test_vision_failures_stop_the_run_with_a_clear_error():
    w = World()
    backend = Scripted({**script([ACCEPT]), "actor": BackendError("HTTP 500 after 3 attempts")})
    with pytest.raises(BackendError, match=r"actor \(scripted\) failed: HTTP 500 after 3 attempts"):
        w.run(backend)
    with pytest.raises(ValueError, match="does not take images"):
        w.run(Scripted(script([ACCEPT]), images=False))


def test_forced_mode_cached_caption_and_counts():
    w = World()
    backend = Scripted(script([REJECT, ACCEPT], qtype="static"))
    params = ReflectionParams(question_type="dynamic (shrink)", max_rounds=2, caption_frames=4)
    first = w.run(backend, params=params)
    assert first.trace["mode"] == "dynamic" and first.trace["mode_source"] == "set by question_type"
    assert "router" not in backend.roles()
    assert first.trace["cost"]["llm_calls"] == {"note": 4, "summary": 1, "actor": 2, "evaluator": 2, "reflector": 1}
    assert first.trace["cost"]["llm_calls_total"] <= expected_calls(params, False, 64)
    backend = Scripted(script([ACCEPT]))
    again = w.run(backend, params=params, caption=first.caption)
    assert again.trace["caption_from"] == "cache" and "note" not in backend.roles()
    assert again.trace["global_caption"] == first.trace["global_caption"]


def test_small_and_one_frame_videos():
    frames = coloured_frames(10)
    pool = sample_pool(frames, 64, fps=None)
    assert pool.frame_ids == list(range(10)) and pool.label(3) == "frame 3 of 10"
    one = sample_pool(coloured_frames(1), 64)
    backend = Scripted(script([REJECT] * 3, qtype="static", global_reply=NOT_ENOUGH))
    result = run("What is shown?", one, torch.ones(1, D), lambda t: axis(0), Models.of(backend),
                 ReflectionParams())
    assert [r["frames"] for r in result.trace["rounds"]] == [[0], [0], [0]]
    assert result.keyframes == [0] and result.answer == "answer 3"
    with pytest.raises(ValueError, match="no frames"):
        sample_pool(torch.zeros(0, 4, 4, 3), 64)


def test_question_and_embedding_checks():
    w = World()
    with pytest.raises(ValueError, match="question is empty"):
        w.run(Scripted(script([ACCEPT])), question="  \n ")
    with pytest.raises(ValueError, match="63 embeddings for 64 pool frames"):
        run("Q?", w.pool, w.E[:63], w.embed_text, Models.of(Scripted(script([ACCEPT]))), ReflectionParams())
