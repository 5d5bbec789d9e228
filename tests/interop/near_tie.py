"""Two greedy decodings of one prompt by two programs that compute in floating point, each in
its own order, may part where the top two tokens are as close as the programs' logits are to
each other. These helpers tell such a near tie from a wrong token, from each program's
log-probabilities along its own decoding (`tuna generate --json --logprobs 2` gives tuna's)."""
import math


def log_softmax(x):
    import numpy as np
    x = np.asarray(x, dtype=np.float64)
    mx = x.max()
    return x - (mx + math.log(np.exp(x - mx).sum()))


def top_dict(lp, chosen, k=2):
    """{id: log-probability} of a row's k most likely tokens and the chosen one."""
    import numpy as np
    ids = [int(i) for i in np.argsort(-lp, kind="stable")[:k]] + [int(chosen)]
    return {i: float(lp[i]) for i in ids}


def tuna_logprobs(d):
    """From `tuna generate --json --logprobs N`'s object: the sampled ids (a final EOS included)
    and per token {id: log-probability}."""
    lps = [dict([(t[0], t[1]) for t in e["top"]] + [(e["id"], e["logprob"])])
           for e in d["logprobs"]]
    return [e["id"] for e in d["logprobs"]], lps


def parting(ids_a, lp_a, ids_b, lp_b):
    """(k, delta, gap). k: the tokens the two decodings share (their length when neither parts);
    delta: the largest |log-probability difference| over those positions, for the tokens both
    report; gap (None when they do not part): where they part, A's margin for its token over
    B's plus B's for its over A's. Two models whose log-probabilities are within delta' of each
    other part only where gap <= 2 delta'. gap is inf where B's token is not among A's reported
    tokens (its top two), or A's not among B's."""
    k = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y),
             min(len(ids_a), len(ids_b)))
    delta = max([abs(lp_a[i][t] - lp_b[i][t]) for i in range(k) for t in lp_a[i] if t in lp_b[i]]
                or [0.0])
    if k == min(len(ids_a), len(ids_b)):
        return k, delta, None
    x, y = ids_a[k], ids_b[k]
    if y not in lp_a[k] or x not in lp_b[k]:
        return k, delta, math.inf
    return k, delta, (lp_a[k][x] - lp_a[k][y]) + (lp_b[k][y] - lp_b[k][x])
