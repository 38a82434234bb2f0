"""Synthetic check of update_trust references (2026-12-03): 10 updates a round in 20,000 dimensions, honest = m + noise
(|m| = 1, |noise| = 3: the noise-dominated regime of non-IID parties), k attackers; the cosine of the trust-weighted
aggregate with the honest mean, 20 trials. Run from the project root: python docs/results/scripts/trust_reference_sim.py"""
import torch, math, sys
sys.path.insert(0, ".")
def majority_core(updates):  # the previous reference's core (commit f31c666)
    n = updates.shape[0]
    distances = torch.cdist(updates.unsqueeze(0), updates.unsqueeze(0)).squeeze(0)
    nearest = distances.sort(dim=1).values[:, 1 : n // 2 + 1]
    return nearest.sum(dim=1).argsort(stable=True)[: n // 2 + 1].sort().values
from fedlight.strategies.trust import trust_reference  # the committed reference
from fedlight.strategies.robust import coordinate_median, centered_clipping, clipping_radius
from fedlight.attacks.updates import sign_flip, alie, alie_z, ipm
torch.manual_seed(0)
d = 20000

def refs(U):
    n = U.shape[0]
    med = coordinate_median(U)
    core = U[majority_core(U)].median(dim=0).values
    out = {"median": med, "core": core}
    out["screened_median"] = trust_reference(U)
    return out

def score(U, ref):
    cos = torch.clamp(torch.nn.functional.cosine_similarity(U, ref.unsqueeze(0), dim=1), min=0)
    norms = U.norm(dim=1)
    return cos * torch.clamp(ref.norm() / norms, max=1.0)

def run(attack, k, n=10, noise=3.0, trials=20):
    res = {}
    for t in range(trials):
        m = torch.randn(d, dtype=torch.float64); m /= m.norm()
        H = m + torch.randn(n - k, d, dtype=torch.float64) * noise / math.sqrt(d)
        if attack == "sign_flip": A = sign_flip(H).expand(k, d)
        elif attack == "gaussian": A = torch.randn(k, d, dtype=torch.float64)
        elif attack == "scale": A = H[:k] * 10
        elif attack == "hetero": A = H[:k] * 4; H = torch.cat([H, H[:k]]); A = A[:0]
        elif attack == "alie": A = alie(H, alie_z(n, k)).expand(k, d)
        elif attack == "ipm_2": A = ipm(H, 2.0).expand(k, d)
        elif attack == "ipm_0.5": A = ipm(H, 0.5).expand(k, d)
        U = torch.cat([H, A]) if k else H
        hm = H.mean(0)
        for name, r in refs(U).items():
            w = score(U, r)
            agg = (w[:, None] * U).sum(0) / w.sum().clamp_min(1e-12)
            res.setdefault(name, []).append((float(torch.nn.functional.cosine_similarity(agg, hm, dim=0)),
                                             float(agg.norm() / hm.norm()), float(w[n - k:].sum() / w.sum()) if k else 0.0))
    for name, v in res.items():
        c = sum(x[0] for x in v) / len(v); nr = sum(x[1] for x in v) / len(v); wa = sum(x[2] for x in v) / len(v)
        worst = min(x[0] for x in v)
        print(f"{attack:9s} k={k} {name:16s} cos(agg, honest mean) {c:+.3f} (worst {worst:+.3f}) |agg|/|hm| {nr:6.2f} attacker weight share {wa:.2f}")

for attack in ["none", "sign_flip", "gaussian", "scale", "alie", "ipm_0.5", "ipm_2"]:
    for k in ([0] if attack == "none" else [2, 3, 4, 5, 6]):
        run(attack, k)
