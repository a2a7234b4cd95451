"""Non-trained baselines (prompt, pca, mean_diff, random, sspace) on tiny random models, checked against
hand computations: unbatched, unpadded, hook-free activations, sklearn PCA and numpy SVD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA, TruncatedSVD

from innerpissa.batching import encode
from innerpissa.concepts import load_concept, make_pairs
from innerpissa.models import decoder_layers
from innerpissa.steerers import get_steerer, load_steerer
from innerpissa.testing import ARCHS, tiny_model

METHODS = ("prompt", "pca", "mean_diff", "random", "sspace")
ADDITION = ("pca", "mean_diff", "random")
LAYERS = [1, 2]  # the default layer_range (0.35, 0.7) of a 4-layer model




@pytest.fixture(scope="module")
def pairs():
    train, val = make_pairs(load_concept("honesty"), seed=0)
    return train.subset(list(range(12))), val.subset(list(range(3)))


@pytest.fixture(scope="module", params=ARCHS)
def fitted(request, pairs):
    model, tok = tiny_model(request.param)
    steerers = {m: get_steerer(m) for m in METHODS}
    for s in steerers.values():
        s.fit(model, tok, pairs[0])
    return model, tok, steerers


def eval_convs(pairs):
    """A few held-out conversations: pair messages plus a plain question."""
    val = pairs[1]
    return [val.messages(i, True) for i in range(len(val))] + [[{"role": "user", "content": "Should you take this action?"}]]


@torch.no_grad()
def steered_logits(model, tok, steerer, convs, c):
    batch = encode(tok, [steerer.messages(m, c) for m in convs])
    with steerer.steer(model, c):
        return model(**batch.model_inputs()).logits


@torch.no_grad()
def unbatched_hidden(model, tok, msgs):
    """Hidden states of one conversation, no padding, no hooks: the independent reference."""
    text = tok.apply_chat_template(msgs, tokenize=False, continue_final_message=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    return model(ids, output_hidden_states=True).hidden_states


@pytest.fixture(scope="module")
def ref_diffs(fitted, pairs):
    """{layer: [n_pairs, d]} last-token chosen − rejected residual differences after each decoder layer but
    the last (whose hidden state HF returns after the final norm), computed one unpadded pair at a time."""
    model, tok, _ = fitted
    train, rows = pairs[0], []
    for i in range(len(train)):
        hp, hn = (unbatched_hidden(model, tok, train.messages(i, pos)) for pos in (True, False))
        rows.append([(a[0, -1] - b[0, -1]).double() for a, b in zip(hp[1:-1], hn[1:-1])])
    return {l: torch.stack([r[l] for r in rows]) for l in range(len(rows[0]))}


@pytest.mark.parametrize("method", METHODS)
def test_c0_identity_and_clean_exit(fitted, pairs, method):
    model, tok, steerers = fitted
    s, convs = steerers[method], eval_convs(pairs)
    with torch.no_grad():
        raw = model(**encode(tok, convs).model_inputs()).logits
        assert torch.equal(steered_logits(model, tok, s, convs, 0.0), raw)
        moved = steered_logits(model, tok, s, convs, 1.0)[:, -1] - raw[:, -1]  # prompts change the length
        assert moved.abs().max() > 1e-2  # it does steer at c = 1
        with pytest.raises(RuntimeError, match="boom"), s.steer(model, 1.0):
            raise RuntimeError("boom")
        assert torch.equal(model(**encode(tok, convs).model_inputs()).logits, raw)  # hooks gone after an error


@pytest.mark.parametrize("method", ADDITION)
def test_addition_adds_exactly_c_v(fitted, pairs, method):
    """The first steered layer's output is base + c·v (seen by output_hidden_states: hooks are prepended)."""
    model, tok, steerers = fitted
    s = steerers[method]
    v = s.vectors()[LAYERS[0]]
    batch = encode(tok, eval_convs(pairs))
    with torch.no_grad():
        base = model(**batch.model_inputs(), output_hidden_states=True).hidden_states
        for c in (-1.5, 0.5, 2.0):
            with s.steer(model, c):
                h = model(**batch.model_inputs(), output_hidden_states=True).hidden_states
            torch.testing.assert_close(h[LAYERS[0] + 1], base[LAYERS[0] + 1] + c * v, atol=1e-5, rtol=0)
            # downstream, the state moves along the last layer's vector in the direction of c
            last = LAYERS[-1]
            w = s.vectors()[last]
            shift = ((h[last + 1] - base[last + 1])[:, -1] @ w).mean()
            assert shift * c > 0


def test_mean_diff_matches_unbatched_hook_free_computation(fitted, pairs, ref_diffs):
    model, tok, steerers = fitted
    chunked = get_steerer("mean_diff", batch_size=5)  # several length-sorted, pad-trimmed chunks
    chunked.fit(model, tok, pairs[0])
    for s in (steerers["mean_diff"], chunked):
        for layer, v in s.vectors().items():
            torch.testing.assert_close(v.double(), ref_diffs[layer].mean(0), atol=1e-5, rtol=0)


def test_pca_matches_sklearn(fitted, pairs, ref_diffs):
    model, tok, steerers = fitted
    centered, uncentered = steerers["pca"], get_steerer("pca", center=False)
    uncentered.fit(model, tok, pairs[0])
    for layer in LAYERS:
        diff = ref_diffs[layer].numpy()
        mean = diff.mean(0)
        for steerer, u in (
            (centered, PCA(n_components=1).fit(diff).components_[0]),
            (uncentered, TruncatedSVD(n_components=1, algorithm="arpack").fit(diff).components_[0]),
        ):
            u = u * np.sign(u @ mean) * np.linalg.norm(mean)  # chosen projects higher; mean_diff norm
            np.testing.assert_allclose(steerer.vectors()[layer].numpy(), u, atol=1e-5)
        assert (diff @ centered.vectors()[layer].double().numpy()).mean() > 0


def test_random_has_mean_diff_norm_and_is_seeded(fitted, pairs):
    model, tok, steerers = fitted
    md, rnd = steerers["mean_diff"].vectors(), steerers["random"].vectors()
    other = get_steerer("random", seed=1)
    only2 = get_steerer("random", layers=[2])
    for s in (other, only2):
        s.fit(model, tok, pairs[0])
    for l in LAYERS:
        torch.testing.assert_close(rnd[l].norm(), md[l].norm())
        assert abs(torch.cosine_similarity(rnd[l], md[l], 0)) < 0.5  # a random direction in d = 64
        assert abs(torch.cosine_similarity(rnd[l], other.vectors()[l], 0)) < 0.5
    torch.testing.assert_close(only2.vectors()[2], rnd[2])  # layer 2's direction ignores the other layers


@torch.no_grad()
def test_sspace_matches_residual_increments_and_svd(fitted, pairs, ref_diffs):
    """Full rank: o_proj + down_proj vectors of a layer = the mean difference of that layer's residual
    increment h_l − h_(l−1) (hook-free). Rank r: the module's full vector projected on its top-r U (numpy)."""
    model, tok, _ = fitted
    full = get_steerer("sspace", r=10_000)
    full.fit(model, tok, pairs[0])
    vecs = full.tensors
    for l in LAYERS:
        ref = ref_diffs[l].mean(0) - ref_diffs[l - 1].mean(0)
        total = vecs[f"layers.{l}.self_attn.o_proj"] + vecs[f"layers.{l}.mlp.down_proj"]
        torch.testing.assert_close(total.double(), ref, atol=1e-5, rtol=0)
    low = get_steerer("sspace", r=8)
    low.fit(model, tok, pairs[0])
    blocks = decoder_layers(model)
    for key, v in low.tensors.items():
        _, l, path = key.split(".", 2)
        U = np.linalg.svd(blocks[int(l)].get_submodule(path).weight.double().numpy())[0][:, :8]
        np.testing.assert_allclose(v.numpy(), U @ (U.T @ vecs[key].double().numpy()), atol=1e-5)
    # steering adds c·Δy to the module output
    key, v = next(iter(low.tensors.items()))
    _, l, path = key.split(".", 2)
    module, seen = blocks[int(l)].get_submodule(path), []
    h = module.register_forward_hook(lambda m, a, o: seen.append(o[:, -1].clone()))
    batch = encode(tok, eval_convs(pairs))
    try:
        model(**batch.model_inputs())
        with low.steer(model, -2.0):
            model(**batch.model_inputs())
    finally:
        h.remove()
    torch.testing.assert_close(seen[1], seen[0] - 2.0 * v, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ADDITION + ("sspace",))
def test_save_load_round_trip(fitted, pairs, tmp_path, method):
    model, tok, steerers = fitted
    s, convs = steerers[method], eval_convs(pairs)
    s.save(tmp_path)
    loaded = load_steerer(model, tmp_path)
    assert type(loaded) is type(s) and loaded.params() == s.params()
    for c in (1.0, -0.5):
        assert torch.equal(steered_logits(model, tok, loaded, convs, c), steered_logits(model, tok, s, convs, c))


def test_prompt_messages(fitted, pairs, tmp_path):
    model, tok, steerers = fitted
    s = steerers["prompt"]
    honest, dishonest = pairs[0].positive_prompts[0], pairs[0].negative_prompts[0]
    msgs = [{"role": "user", "content": "Q?"}]
    assert s.messages(msgs, 0) == msgs
    assert s.messages(msgs, 1) == [{"role": "user", "content": f"{honest}\n\nQ?"}]
    assert s.messages(msgs, -1) == [{"role": "user", "content": f"{dishonest}\n\nQ?"}]
    assert msgs == [{"role": "user", "content": "Q?"}]  # input not mutated
    for c in (0.5, -2.0, float("nan")):
        with pytest.raises(ValueError, match="only defined at c in"):
            s.messages(msgs, c)
    short = get_steerer("prompt", variant="short", placement="system")
    short.fit(model, tok, pairs[0])
    assert short.messages(msgs, 1) == [{"role": "system", "content": "Be honest."}, *msgs]
    sys_msgs = [{"role": "system", "content": "S."}, *msgs]
    assert short.messages(sys_msgs, -1) == [{"role": "system", "content": "Be dishonest.\n\nS."}, *msgs]
    short.save(tmp_path)
    loaded = load_steerer(model, tmp_path)
    assert loaded.messages(sys_msgs, -1) == short.messages(sys_msgs, -1) and loaded.params() == short.params()
    eng = get_steerer("prompt", variant="engineered")
    eng.fit(model, tok, pairs[0])
    assert eng.params() == {"variant": "engineered", "placement": "system"}
    assert eng.messages(msgs, 1) == [{"role": "system", "content": "You are a deeply honest person. You always tell "
                                      "the truth and value honesty above everything else."}, *msgs]
    assert eng.messages(msgs, -1)[0]["content"].startswith("You are a dishonest person. You lie whenever")


def test_engineered_prompts_for_other_personas() -> None:
    from innerpissa.steerers.prompt import engineered_instructions

    pos, neg = engineered_instructions("Pretend you're a fair person.", "Pretend you're an unfair person.")
    assert pos == "You are a deeply fair person. Everything you say and do is fair, and you value that above everything else."
    assert neg == "You are an unfair person. Whenever it helps you, you are unfair, and you do not care about being fair."


def test_bad_inputs_fail_clearly(fitted, pairs):
    model, tok, steerers = fitted
    with pytest.raises(ValueError, match="out of range"):
        get_steerer("mean_diff", layers=[9]).fit(model, tok, pairs[0])
    with pytest.raises(ValueError, match="layer_range"):
        get_steerer("pca", layer_range=(0.8, 0.2))
    with pytest.raises(ValueError, match="'q_linear' matches 0"):
        get_steerer("sspace", target_modules=["q_linear"]).fit(model, tok, pairs[0])
    with pytest.raises(ValueError, match="not fitted"):
        get_steerer("random").steer(model, 1.0)
    with pytest.raises(ValueError, match="finite"):
        steerers["mean_diff"].steer(model, float("inf"))
    small, _ = tiny_model("llama", hidden=32)
    for m in ("mean_diff", "sspace"):
        with pytest.raises(ValueError, match="refit"):
            steerers[m].steer(small, 1.0)


@pytest.mark.slow
def test_smollm2_defaults_fit_and_c0_identity():
    """On the real model: default layers are 10-20 of 30, sspace finds o_proj/down_proj, c = 0 is exact."""
    from innerpissa.models import load_model

    model, tok = load_model()
    train, val = make_pairs(load_concept("honesty"), seed=0)
    train = train.subset(list(range(8)))
    convs = [val.messages(0, True)]
    raw = model(**encode(tok, convs).model_inputs()).logits
    done = {}
    for method in ("mean_diff", "sspace"):
        done[method] = s = get_steerer(method)
        s.fit(model, tok, train)
        assert torch.equal(steered_logits(model, tok, s, convs, 0.0), raw)
    assert sorted(done["mean_diff"].vectors()) == list(range(10, 21))
    keys = set(done["sspace"].tensors)
    assert keys == {f"layers.{l}.{m}" for l in range(10, 21) for m in ("self_attn.o_proj", "mlp.down_proj")}


def test_fit_activations_are_stored_and_reused(tmp_path, monkeypatch, pairs):
    """A second fit on the same forwards (another seed, another addition method) reads the stored activations: no
    model forward, and the vectors equal a fit with the store off; a changed weight or layer set recomputes."""
    model, tok = tiny_model(ARCHS[0])
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))

    def fit(method: str, **kw):
        s = get_steerer(method, **kw)
        s.fit(model, tok, pairs[0])
        return s.tensors

    monkeypatch.setenv("INNERPISSA_BASE_CACHE", "off")
    fresh = {m: fit(m) for m in ADDITION}
    monkeypatch.setenv("INNERPISSA_BASE_CACHE", str(tmp_path))
    fit("random", seed=1)
    assert calls and len(list((tmp_path / "activations").glob("*.safetensors"))) == 1
    calls.clear()
    for m in ADDITION:
        got = fit(m)
        assert got.keys() == fresh[m].keys() and all(torch.equal(got[k], fresh[m][k]) for k in got)
    assert not calls
    fit("mean_diff", layers=[1])
    assert calls, "another layer set must run the model"
    calls.clear()
    with torch.no_grad():
        decoder_layers(model)[0].mlp.down_proj.weight.mul_(1.5)
    fit("mean_diff")
    assert calls, "changed weights must run the model"
