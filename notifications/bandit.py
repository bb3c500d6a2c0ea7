"""Per-patient contextual Thompson sampling over tip categories, and its offline simulation (no Django).

Each (context, category) pair is an arm with a Beta(1 + rewards, 1 + failures) posterior, where
the reward is the patient's response to a tip (1 helpful or opened, 0 dismissed or not helpful;
fractional rewards are allowed). To choose, draw one sample per candidate category and take the
largest (Thompson 1933; Chapelle & Li, "An empirical evaluation of Thompson sampling", NIPS 2011).
Contexts share nothing, so a patient's night-time tips learn separately from their meal tips;
a small pooled prior from the patient's other contexts speeds up a new context.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

POOLING_WEIGHT = 0.3  # how much of the patient's evidence from other contexts a context borrows


@dataclass
class ThompsonSampler:
    """Counts per (context, category): (successes, failures)."""

    counts: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0.0]))

    def update(self, *, context: str, category: str, reward: float) -> None:
        arm = self.counts[(context, category)]
        arm[0] += reward
        arm[1] += 1.0 - reward

    def posterior(self, *, context: str, category: str) -> tuple[float, float]:
        own = self.counts.get((context, category), [0.0, 0.0])
        pooled = [0.0, 0.0]
        for (other_context, other_category), (s, f) in self.counts.items():
            if other_category == category and other_context != context:
                pooled[0] += s
                pooled[1] += f
        return 1.0 + own[0] + POOLING_WEIGHT * pooled[0], 1.0 + own[1] + POOLING_WEIGHT * pooled[1]

    def choose(self, *, context: str, categories: Sequence[str], rng: random.Random) -> str:
        if not categories:
            raise ValueError("no categories to choose from")
        draws = [(rng.betavariate(*self.posterior(context=context, category=c)), c) for c in categories]
        return max(draws)[1]

    @classmethod
    def from_history(cls, history: Iterable[tuple[str, str, float]]) -> ThompsonSampler:
        sampler = cls()
        for context, category, reward in history:
            sampler.update(context=context, category=category, reward=reward)
        return sampler


# --- Offline simulation --------------------------------------------------------------------------

CATEGORIES = ("meal_composition", "carb_timing", "evening_routine", "activity", "hypo_prevention", "consistency")
CONTEXTS = ("breakfast_spike", "dinner_spike", "night_lows", "high_variability", "general")


@dataclass(frozen=True, slots=True)
class SimulationResult:
    days: int
    patients: int
    bandit_reward_rate: float
    random_reward_rate: float
    oracle_reward_rate: float
    bandit_by_week: list[float]
    random_by_week: list[float]

    @property
    def gain(self) -> float:
        return self.bandit_reward_rate / self.random_reward_rate - 1.0


def _simulated_patient(rng: random.Random) -> dict[tuple[str, str], float]:
    """P(helpful) per (context, category): each patient likes 1–2 categories (0.55–0.8), the rest 0.05–0.25,
    and in each context the matching categories get a boost, as real relevance would."""
    liked = set(rng.sample(CATEGORIES, rng.choice((1, 2))))
    relevant = {"breakfast_spike": {"meal_composition", "carb_timing"}, "dinner_spike": {"activity", "evening_routine"},
                "night_lows": {"hypo_prevention"}, "high_variability": {"consistency", "carb_timing"}, "general": set()}
    probabilities = {}
    for context in CONTEXTS:
        for category in CATEGORIES:
            p = rng.uniform(0.55, 0.8) if category in liked else rng.uniform(0.05, 0.25)
            if category in relevant[context]:
                p = min(0.95, p + 0.1)
            probabilities[(context, category)] = p
    return probabilities


def simulate(*, patients: int = 500, days: int = 56, seed: int = 7) -> SimulationResult:
    """One tip a day per simulated patient, in a random context; the bandit vs uniform random choice."""
    rng = random.Random(seed)
    bandit_weekly = [0.0] * ((days + 6) // 7)
    random_weekly = [0.0] * ((days + 6) // 7)
    oracle_total = 0.0
    for _ in range(patients):
        truth = _simulated_patient(rng)
        sampler = ThompsonSampler()
        for day in range(days):
            context = rng.choice(CONTEXTS)
            chosen = sampler.choose(context=context, categories=CATEGORIES, rng=rng)
            reward = 1.0 if rng.random() < truth[(context, chosen)] else 0.0
            sampler.update(context=context, category=chosen, reward=reward)
            bandit_weekly[day // 7] += reward
            random_weekly[day // 7] += 1.0 if rng.random() < truth[(context, rng.choice(CATEGORIES))] else 0.0
            oracle_total += max(truth[(context, c)] for c in CATEGORIES)
    per_week = [patients * min(7, days - 7 * w) for w in range(len(bandit_weekly))]
    total = patients * days
    return SimulationResult(
        days=days, patients=patients,
        bandit_reward_rate=sum(bandit_weekly) / total, random_reward_rate=sum(random_weekly) / total,
        oracle_reward_rate=oracle_total / total,
        bandit_by_week=[round(b / n, 3) for b, n in zip(bandit_weekly, per_week, strict=True)],
        random_by_week=[round(r / n, 3) for r, n in zip(random_weekly, per_week, strict=True)],
    )


def main() -> None:
    result = simulate()
    print(f"{result.patients} simulated patients × {result.days} days, one tip a day")
    print(f"helpful rate: Thompson sampling {result.bandit_reward_rate:.3f}, random {result.random_reward_rate:.3f}, "
          f"oracle {result.oracle_reward_rate:.3f}; gain over random {result.gain:+.0%}")
    print("week  bandit  random")
    for week, (b, r) in enumerate(zip(result.bandit_by_week, result.random_by_week, strict=True), start=1):
        print(f"{week:>4}  {b:.3f}   {r:.3f}  {'#' * round(b * 50)}")


if __name__ == "__main__":
    main()
