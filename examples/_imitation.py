"""The imitation experiment of the Differentiable MPC paper (section 5.3, Figure 4) for any of
diffcontrol's shipped models: an expert MPC, and learners that see its data.

- **nn**: an LSTM policy from the initial state to the control sequence (Adam);
- **sysid**: the physical parameters fitted to the expert's transitions (x_t, u_t) -> x_(t+1);
- **mpc.dx**: the physical parameters learned from the expert's controls only, through the layer;
- **mpc.cost**: the cost learned (dynamics known), through the layer;
- **mpc.cost.dx**: both, through the layer.

The learned cost is the paper's weighted distance to a goal, C(tau) = ||w o (tau - tau_g)||^2
over tau = [x; u], which is the models' 1/2 tau^T diag(q) tau + p^T tau with q = 2 w^2 and
p = -2 w^2 tau_g (plus a constant). As in the paper, w and tau_g are learned in turn, ten
steps each (learning both at once is unstable, the paper says); w through its logarithm.

Every learner starts from the truth perturbed (physical parameters and w by a factor
exp(s N(0, 1)), tau_g by s/2 N(0, 1), with the task's spread s, ``Task.start_spread``), the
same perturbation for every method that learns the same thing. As in the paper, each
method's score is its test imitation loss (mean squared control error on held-out initial
states) at its best validation imitation loss, averaged over trials.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import progress, pyplot, save_figure, write_table

import diffcontrol as dc

METHODS = ("nn", "sysid", "mpc.dx", "mpc.cost", "mpc.cost.dx")
COLUMNS = {m: "nn (LSTM)" if m == "nn" else m for m in METHODS}  # the tables' headers
ALTERNATE_EVERY = 10  # steps on w, then as many on tau_g (the paper: every 10 epochs)
SPREAD = 0.4  # the learners' start spread unless a task sets its own (the paper does not give one)


@dataclass
class Task:
    """An imitation task: the model, its compiled layer, the expert's physical parameters, the
    transition in torch for sysid, x = step(x, u, physical) (an independent transcription of the
    model's dynamics), the sampler of initial states, x0 = sample_x0(n, generator) (n, nx), and
    the names of tau = [x; u]'s entries (for the tables) and the spread of the learners' start,
    ``start_spread`` (the standard deviation of its perturbation of log physical and log w;
    tau_g's is half of it)."""

    name: str
    model: dc.models.ModelProblem
    layer: Callable
    physical: dict[str, float]
    step: Callable
    sample_x0: Callable
    tau_labels: tuple[str, ...]
    start_spread: float = SPREAD

    def expert_cost(self) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(self.model.default_values[k], dtype=torch.float64) for k in ("q", "p")}

    def expert_physical(self) -> dict[str, torch.Tensor]:
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in self.physical.items()}


def expert_data(task: Task, n: int, seed: int) -> dict[str, torch.Tensor]:
    """n initial states ``x0`` (n, nx), the expert's states ``x`` (n, T+1, nx) and controls ``u`` (n, T, nu)."""
    x0 = task.sample_x0(n, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        x, u = task.layer(**task.expert_physical(), **task.expert_cost(), x0=x0)
    return {"x0": x0, "x": x, "u": u}


def cost_of(log_w: torch.Tensor, goal: torch.Tensor) -> dict[str, torch.Tensor]:
    """The models' (q, p) of the cost ||exp(log_w) o (tau - goal)||^2."""
    w2 = (2 * log_w).exp()
    return {"q": 2 * w2, "p": -2 * w2 * goal}


def weights_of(cost: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(w, tau_g) of the models' (q, p): the inverse of ``cost_of``."""
    return (cost["q"] / 2).sqrt(), -cost["p"] / cost["q"]


def _perturbed(values: torch.Tensor, scale: float, gen: torch.Generator) -> torch.Tensor:
    return (values + scale * torch.randn(values.shape, generator=gen, dtype=torch.float64)).requires_grad_()


def start_physical(physical: dict[str, float], seed: int, spread: float = SPREAD) -> dict[str, torch.Tensor]:
    """The logarithms of the physical parameters, each perturbed by ``spread`` N(0, 1) (the
    start of sysid, mpc.dx, mpc.cost.dx)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: _perturbed(torch.tensor(math.log(v), dtype=torch.float64), spread, gen) for k, v in physical.items()}


def start_cost(task: Task, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log w and tau_g, perturbed by the task's spread and half of it (the start of mpc.cost and mpc.cost.dx)."""
    gen = torch.Generator().manual_seed(seed + 7919)  # a stream of its own: the physical start is unchanged
    w, goal = weights_of(task.expert_cost())
    return _perturbed(w.log(), task.start_spread, gen), _perturbed(goal, task.start_spread / 2, gen)


def imitation_loss(layer: Callable, data: dict, values: dict) -> float:
    """Mean squared control error of ``layer``'s MPC at ``values`` (physical and cost) against
    the expert's controls ``data["u"]``, from ``data["x0"]``."""
    with torch.no_grad():
        _, u = layer(**values, x0=data["x0"])
    return float(((u - data["u"]) ** 2).mean())


class _Selection:
    """The paper's model selection: the test loss at the best validation loss seen."""

    def __init__(self):
        self.valid, self.test, self.step, self.state = math.inf, math.nan, -1, None

    def offer(self, step: int, valid: float, test: Callable[[], float], state) -> None:
        if valid < self.valid:  # the test set is scored only when the validation loss improves
            self.valid, self.test, self.step, self.state = valid, test(), step, state

    def result(self) -> dict:
        """The selected ``test`` and ``valid`` losses, ``step`` and learned ``values``."""
        return {"test": self.test, "valid": self.valid, "step": self.step, "values": self.state}


def train_mpc(task: Task, method: str, data: dict, steps: int, batch: int, seed: int, lr: float = 3e-2,
              eval_every: int = 10) -> dict:
    """mpc.dx, mpc.cost or mpc.cost.dx through ``task.layer``, RMSprop (decay 0.5, as in the
    paper) on minibatches of the training set's initial states; each example's solve is
    warm-started from its previous solution. Returns the selected step's ``test`` and
    ``valid`` losses, ``step`` and learned ``values``."""
    learn_dx, learn_cost = method in ("mpc.dx", "mpc.cost.dx"), method in ("mpc.cost", "mpc.cost.dx")
    log_physical = start_physical(task.physical, seed, task.start_spread) if learn_dx else None
    log_w, goal = start_cost(task, seed) if learn_cost else (None, None)
    optimizers = {}
    if learn_dx:
        optimizers["dx"] = torch.optim.RMSprop(list(log_physical.values()), lr=lr, alpha=0.5)
    if learn_cost:
        optimizers["w"] = torch.optim.RMSprop([log_w], lr=lr, alpha=0.5)
        optimizers["goal"] = torch.optim.RMSprop([goal], lr=lr / 3, alpha=0.5)

    def values() -> dict:
        physical = ({k: v.exp() for k, v in log_physical.items()} if learn_dx else task.expert_physical())
        return {**physical, **(cost_of(log_w, goal) if learn_cost else task.expert_cost())}

    gen = torch.Generator().manual_seed(seed)
    train, n = data["train"], data["train"]["x0"].shape[0]
    warm = train["u"].clone()
    selection = _Selection()
    for step in progress(range(steps), method):
        idx = torch.randint(0, n, (min(batch, n),), generator=gen)
        _, u = task.layer(**values(), x0=train["x0"][idx], u_init=warm[idx])
        warm[idx] = u.detach()
        loss = ((u - train["u"][idx]) ** 2).mean()
        for opt in optimizers.values():
            opt.zero_grad()
        loss.backward()
        if learn_dx:
            optimizers["dx"].step()
        if learn_cost:
            optimizers["w" if (step // ALTERNATE_EVERY) % 2 == 0 else "goal"].step()
        if step % eval_every == 0 or step == steps - 1:
            current = {k: v.detach() for k, v in values().items()}
            selection.offer(step + 1, imitation_loss(task.layer, data["valid"], current),
                            lambda current=current: imitation_loss(task.layer, data["test"], current), current)
    return selection.result()


def train_sysid(task: Task, data: dict, steps: int, seed: int, lr: float = 3e-2, eval_every: int = 10) -> dict:
    """sysid: the physical parameters fitted to the training set's transitions (RMSprop on
    their logarithms, from mpc.dx's start), selected by the validation imitation loss of the
    MPC they make."""
    history = fit_transitions(task.step, task.physical, data["train"], steps, seed, lr, log_every=eval_every,
                              spread=task.start_spread)
    selection = _Selection()
    for step, physical in history:
        current = {**physical, **task.expert_cost()}
        selection.offer(step, imitation_loss(task.layer, data["valid"], current),
                        lambda current=current: imitation_loss(task.layer, data["test"], current), current)
    return selection.result()


def fit_transitions(step_fn: Callable, physical: dict[str, float], train: dict, steps: int, seed: int,
                    lr: float = 3e-2, log_every: int | None = None, spread: float = SPREAD) -> list[tuple[int, dict]]:
    """Regress the physical parameters on the transitions (x_t, u_t) -> x_(t+1) of ``train``
    (mean squared next-state error; RMSprop, decay 0.5, on their logarithms from
    ``start_physical``'s perturbation of ``physical`` by ``spread``). Returns (steps taken, parameters) after
    the first step, every ``log_every``-th and the last."""
    logs = start_physical(physical, seed, spread)
    opt = torch.optim.RMSprop(list(logs.values()), lr=lr, alpha=0.5)
    history = []
    for step in progress(range(steps), "sysid"):
        p = {k: v.exp() for k, v in logs.items()}
        loss = ((step_fn(train["x"][:, :-1], train["u"], p) - train["x"][:, 1:]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == steps - 1 or (log_every and step % log_every == 0):
            history.append((step + 1, {k: v.detach().exp() for k, v in logs.items()}))
    return history


class LSTMPolicy(torch.nn.Module):
    """The paper's nn baseline: the initial state in, the nominal control sequence (B, T, nu) out."""

    def __init__(self, n_state: int, n_ctrl: int, horizon: int, hidden: int = 64):
        super().__init__()
        self.horizon = horizon
        self.lstm = torch.nn.LSTM(n_state, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, n_ctrl)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x0[:, None].expand(-1, self.horizon, -1))
        return self.head(out)


def train_nn(data: dict, steps: int, seed: int, lr: float = 1e-3, eval_every: int = 10) -> dict:
    """The LSTM on the whole training set (Adam), selected by its validation imitation loss."""
    torch.manual_seed(seed)
    train = data["train"]
    policy = LSTMPolicy(train["x0"].shape[-1], train["u"].shape[-1], train["u"].shape[1]).double()
    opt = torch.optim.Adam(policy.parameters(), lr=lr)

    def loss_on(split: dict) -> float:
        with torch.no_grad():
            return float(((policy(split["x0"]) - split["u"]) ** 2).mean())

    selection = _Selection()
    for step in progress(range(steps), "nn"):
        loss = ((policy(train["x0"]) - train["u"]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps - 1:
            selection.offer(step + 1, loss_on(data["valid"]), lambda: loss_on(data["test"]),
                            {k: v.detach().clone() for k, v in policy.state_dict().items()})
    policy.load_state_dict(selection.state)
    return {**selection.result(), "policy": policy}


def run(task: Task, sizes: tuple[int, ...], steps: int, nn_steps: int, valid: int = 32, test: int = 64,
        eval_every: int = 10, batch: int = 16, seed: int = 0) -> dict:
    """One trial: every method at every training-set size, each scored on the validation set
    every ``eval_every`` steps; returns results[size][method] (``train_*``'s dicts). ``seed``
    draws the learners' starts and every data set (seed 0: the held-out sets of seeds 10000
    and 20000, the training sets of seed ``size``)."""
    held_out = {"valid": expert_data(task, valid, seed=10_000 + seed),
                "test": expert_data(task, test, seed=20_000 + seed)}
    results = {}
    for size in sizes:
        data = {**held_out, "train": expert_data(task, size, seed=size + 1000 * seed)}
        results[size] = {"nn": train_nn(data, nn_steps, seed),
                         "sysid": train_sysid(task, data, steps, seed, eval_every=eval_every)}
        for method in METHODS[2:]:
            results[size][method] = train_mpc(task, method, data, steps, batch, seed, eval_every=eval_every)
    return results


QUICK = dict(sizes=(8, 32), steps=30, valid=16, test=32, eval_every=30)  # scored at the start and the end
FULL = dict(sizes=(8, 32, 128), steps=200, valid=32, test=64, eval_every=10)


def experiment(make_task: Callable[[int], Task], quick: bool, out: Path, trials: int = 1) -> tuple[Task, list[dict]]:
    """The whole experiment as both scripts run it: ``make_task(horizon)`` (horizon 10 quick,
    20 full), its explain(), ``trials`` trials of every method at every size (``run`` with
    seeds 0, 1, ...; the LSTM takes ten cheap steps per MPC step) and the ``report``. Returns
    the task and each trial's ``run`` results."""
    settings, horizon = (QUICK, 10) if quick else (FULL, 20)
    task = make_task(horizon)
    print(task.model.problem.explain(), "\n")
    results = [run(task, **settings, nn_steps=10 * settings["steps"], seed=seed) for seed in range(trials)]
    report(task, results, out, f"horizon {horizon}, {settings['steps']} training steps")
    return task, results


def _learned_row(task: Task, learner: str, values: dict) -> list[str]:
    """A table row of what ``learner`` learned: the physical parameters, w and tau_g."""
    w, goal = weights_of({k: values[k] for k in ("q", "p")})
    fmt = ", ".join
    return [learner, fmt(f"{k} {float(values[k]):.3f}" for k in task.physical),
            fmt(f"{float(v):.3f}" for v in w), fmt(f"{float(v):.3f}" for v in goal)]


def report(task: Task, trials: list[dict], out: Path, setup: str) -> None:
    """Write ``<task>_imitation.md`` (test imitation loss per method and data size, the mean
    over ``trials``, as the paper reports), its figure (the mean, and the trials' range),
    ``<task>_imitation_trials.md`` (every trial's losses, where there are several) and
    ``<task>_imitation_learned.md`` (what each learner of the first trial's largest data set
    learned)."""
    sizes = sorted(trials[0])
    losses = {m: torch.tensor([[trial[s][m]["test"] for s in sizes] for trial in trials]) for m in METHODS}
    tau = f"({', '.join(task.tau_labels)})"
    truth = {**task.expert_physical(), **task.expert_cost()}
    title = task.name.capitalize()
    write_table(out / f"{task.name}_imitation_learned.md",
                ["learner", ", ".join(task.physical), f"w {tau}", f"tau_g {tau}"],
                [_learned_row(task, "expert", truth)]
                + [_learned_row(task, m, trials[0][sizes[-1]][m]["values"]) for m in METHODS[1:]],
                f"{title} imitation: what the learners trained on {sizes[-1]} trajectories learned "
                "(at their best validation loss; trial 1); the cost is ||w o (tau - tau_g)||^2")
    over = f"the mean over {len(trials)} trials" if len(trials) > 1 else "one trial"
    write_table(out / f"{task.name}_imitation.md", ["expert trajectories", *COLUMNS.values()],
                [[size, *(f"{float(losses[m][:, i].mean()):.3e}" for m in METHODS)] for i, size in enumerate(sizes)],
                f"{title} imitation: test imitation loss at the best validation loss, {over}, {setup}")
    if len(trials) > 1:
        write_table(out / f"{task.name}_imitation_trials.md", ["trial", "expert trajectories", *COLUMNS.values()],
                    [[t + 1, size, *(f"{float(losses[m][t, i]):.3e}" for m in METHODS)]
                     for t in range(len(trials)) for i, size in enumerate(sizes)],
                    f"{title} imitation: every trial's test imitation loss at its best validation loss, {setup}")
    plt = pyplot()
    if plt:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for method in METHODS:
            line, = ax.loglog(sizes, losses[method].mean(0), "o-", label=COLUMNS[method])
            if len(trials) > 1:
                ax.fill_between(sizes, losses[method].min(0).values, losses[method].max(0).values,
                                color=line.get_color(), alpha=0.15)
        ax.set(xlabel="expert trajectories", ylabel="test imitation loss",
               title=f"{task.name} imitation ({over})")
        ax.legend()
        save_figure(fig, out / f"{task.name}_imitation.png")
