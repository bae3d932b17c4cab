"""Claims about labkit.results: the files of a run folder."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labkit import terms
from labkit.results import (
    term_survival,
    N_TERMS,
    HistoryWriter,
    final_accuracies,
    final_accuracy,
    final_values,
    history_columns,
    pivot_trials,
    read_config,
    read_history,
    read_theta,
    run_table,
    theta_matrix,
    write_config,
    write_json_atomic,
    write_theta,
)
from labkit.stats import bootstrap_ci

ROOT = Path(__file__).resolve().parents[1]


def _row(trial, episode, **kw):
    row = {"trial": trial, "episode": episode, "meta_loss": 1.0 / episode,
           "meta_accuracy": 0.2 + 0.01 * episode, "theta_0": 1e-3 * episode,
           "theta_2": -1e-4, "alpha_1": 80.0, "alpha_2": 70.0, "ortho_1": 3.0,
           "ortho_2": 2.0, "ortho_3": 1.0, "weight_angle_3": 89.5}
    row.update(kw)
    return row


def test_history_columns_are_in_the_documented_order():
    cols = history_columns(3)
    assert cols == (
        ["trial", "episode", "meta_loss", "meta_accuracy"]
        + [f"theta_{r}" for r in range(10)]
        + ["alpha_1", "alpha_2"]
        + ["weight_angle_1", "weight_angle_2", "weight_angle_3"]
        + ["ortho_1", "ortho_2", "ortho_3"]
        + ["guarded", "diverged"]
    )
    assert "alpha_5" not in history_columns(5) and "ortho_5" in history_columns(5)


def test_history_round_trips_with_blanks_for_missing_keys(tmp_path):
    w = HistoryWriter(tmp_path, n_layers=3)
    w.append([_row(0, 1), _row(1, 1, guarded="clip")])
    w.append([_row(0, 2, meta_loss=float("nan"), diverged=True, guarded="skip-nonfinite")])
    header = (tmp_path / "history.csv").read_text().splitlines()[0]
    assert header == ",".join(history_columns(3))

    df = read_history(tmp_path)
    assert list(df.columns) == history_columns(3)
    assert len(df) == 3
    assert df["trial"].tolist() == [0, 1, 0] and df["episode"].tolist() == [1, 1, 2]
    assert df["meta_accuracy"].iloc[0] == 0.2 + 0.01  # floats round-trip exactly
    assert df["theta_1"].isna().all()  # inactive term: blank
    assert df["weight_angle_1"].isna().all() and df["weight_angle_3"].iloc[0] == 89.5
    assert math.isnan(df["meta_loss"].iloc[2])
    assert df["guarded"].tolist() == ["", "clip", "skip-nonfinite"]
    assert df["diverged"].tolist() == [0, 0, 1]
    assert read_history(tmp_path / "history.csv").equals(df)  # folder or file


def test_history_writer_rejects_unknown_columns(tmp_path):
    w = HistoryWriter(tmp_path, n_layers=2)
    with pytest.raises(KeyError, match="alpha_9"):
        w.append([{"trial": 0, "episode": 1, "alpha_9": 1.0}])


def test_history_writer_truncates_rows_after_the_checkpoint_on_resume(tmp_path):
    w = HistoryWriter(tmp_path, n_layers=3)
    w.append([_row(t, e) for e in range(1, 8) for t in range(2)])
    # checkpoint at episode 4; the run was killed after writing episode 7
    w2 = HistoryWriter(tmp_path, n_layers=3, truncate_after_episode=4)
    assert read_history(tmp_path)["episode"].max() == 4
    w2.append([_row(t, e) for e in range(5, 9) for t in range(2)])
    df = read_history(tmp_path)
    assert len(df) == 16 and not df.duplicated(["trial", "episode"]).any()
    assert (tmp_path / "history.csv").read_text().count("trial,episode") == 1


def test_history_writer_without_truncation_appends_and_zero_starts_empty(tmp_path):
    HistoryWriter(tmp_path, 3).append([_row(0, 1)])
    HistoryWriter(tmp_path, 3).append([_row(0, 2)])
    assert len(read_history(tmp_path)) == 2
    HistoryWriter(tmp_path, 3, truncate_after_episode=0)
    assert len(read_history(tmp_path)) == 0


def test_history_writer_drops_a_row_cut_short_by_a_kill(tmp_path):
    HistoryWriter(tmp_path, 3).append([_row(0, 1), _row(0, 2)])
    path = tmp_path / "history.csv"
    path.write_text(path.read_text() + "0,3,0.12")  # partial row, no newline
    assert read_history(tmp_path)["episode"].tolist() == [1, 2]
    HistoryWriter(tmp_path, 3).append([_row(0, 3)])
    assert read_history(tmp_path)["episode"].tolist() == [1, 2, 3]


def test_history_writer_refuses_a_file_with_another_number_of_layers(tmp_path):
    HistoryWriter(tmp_path, 3).append([_row(0, 1)])
    with pytest.raises(ValueError, match="header"):
        HistoryWriter(tmp_path, 5)


def test_read_history_on_missing_file_raises_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="history.csv"):
        read_history(tmp_path / "nope")


def test_read_history_on_unparseable_file_names_it(tmp_path):
    (tmp_path / "history.csv").write_text("")
    with pytest.raises(ValueError, match="history.csv"):
        read_history(tmp_path)
    (tmp_path / "history.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="history.csv"):
        read_history(tmp_path)


def test_pivot_trials_pads_diverged_trials_with_nan(tmp_path):
    w = HistoryWriter(tmp_path, 3)
    w.append([_row(0, e) for e in (1, 2, 3)] + [_row(1, 1), _row(1, 2, diverged=1)])
    eps, vals, trials = pivot_trials(read_history(tmp_path), "meta_accuracy")
    assert eps.tolist() == [1, 2, 3] and trials.tolist() == [0, 1]
    np.testing.assert_allclose(vals[0], [0.21, 0.22, 0.23])
    assert vals[1, 0] == pytest.approx(0.21) and np.isnan(vals[1, 1:]).all()  # stopping row excluded


def test_write_json_atomic_leaves_no_tmp_file_and_writes_nan_as_null(tmp_path):
    path = tmp_path / "sub" / "x.json"
    write_json_atomic(path, {"a": float("nan"), "b": np.array([1.0, np.inf]),
                             "c": np.float32(0.5), "d": tmp_path})
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text and "\n  " in text  # indent=2
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": 0.5, "d": str(tmp_path)}
    write_json_atomic(path, {"a": 1})  # replaces
    assert json.loads(path.read_text()) == {"a": 1}


def test_write_json_atomic_keeps_the_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_config_round_trips(tmp_path):
    cfg = {"seed": 3, "rule": "bio", "lr": 1e-3, "sizes": [784, 170, 47]}
    assert write_config(tmp_path, cfg) == tmp_path / "config.json"
    assert read_config(tmp_path) == cfg
    with pytest.raises(FileNotFoundError, match="config.json"):
        read_config(tmp_path / "missing")


def test_theta_json_reports_mean_and_ci_over_non_diverged_trials(tmp_path):
    rng = np.random.default_rng(0)
    theta = np.zeros((6, 10))
    theta[:, 0] = 1e-3 + 1e-4 * rng.normal(size=6)
    theta[:, 2] = -2e-4 + 1e-5 * rng.normal(size=6)
    theta[5] = 1e3  # diverged trial: garbage, must not enter the mean
    theta[4, 9] = np.nan  # a non-finite theta also leaves the mean
    diverged = [0, 0, 0, 0, 0, 1]
    out = write_theta(tmp_path, theta, [0, 2, 9], diverged, n_resamples=200, seed=1)
    back = read_theta(tmp_path)

    assert back["terms"] == [0, 2, 9] and back["level"] == 0.98
    assert back["diverged"] == [False] * 5 + [True]
    assert back["n_trials_used"] == 4
    assert len(back["per_trial"]) == 6 and len(back["per_trial"][0]) == 3
    assert math.isnan(back["per_trial"][4][2])
    np.testing.assert_allclose(back["mean"]["theta_0"], theta[:4, 0].mean())
    np.testing.assert_allclose(back["mean"]["theta_2"], theta[:4, 2].mean())
    for k in ("theta_0", "theta_2", "theta_9"):
        assert back["ci_low"][k] <= back["mean"][k] <= back["ci_high"][k]
    assert back["ci_low"]["theta_0"] < back["ci_high"]["theta_0"]
    assert out["mean"] == back["mean"]
    assert "NaN" not in (tmp_path / "theta.json").read_text()


def test_theta_json_with_every_trial_diverged_has_null_mean(tmp_path):
    write_theta(tmp_path, np.ones(10), [0], [True])
    back = read_theta(tmp_path)
    assert back["n_trials_used"] == 0 and math.isnan(back["mean"]["theta_0"])
    assert json.loads((tmp_path / "theta.json").read_text())["mean"]["theta_0"] is None


def test_term_count_and_theta_columns_come_from_labkit_terms():
    assert N_TERMS == terms.N_TERMS  # results.N_TERMS stays importable (plots uses it)
    cols = history_columns(2)
    assert cols[4 : 4 + terms.N_TERMS] == terms.theta_columns()


# ------------------------------------------------------------------ final accuracy


def _accuracy_history(tmp_path, per_trial, diverged_trial=None):
    """history.csv with meta_accuracy per_trial[t][e - 1] for trial t, episode e."""
    w = HistoryWriter(tmp_path, 2)
    rows = []
    for t, accs in enumerate(per_trial):
        for e, a in enumerate(accs, start=1):
            stop = t == diverged_trial and e == len(accs)
            rows.append({"trial": t, "episode": e, "meta_accuracy": a, "diverged": int(stop),
                         "guarded": "diverged" if stop else ""})
    w.append(rows)
    return read_history(tmp_path)


def test_final_accuracies_average_each_trials_last_episodes(tmp_path):
    per_trial = [np.linspace(0.2, 0.8, 30), np.linspace(0.1, 0.5, 30), np.full(30, 0.4)]
    df = _accuracy_history(tmp_path, per_trial)
    got = final_accuracies(df)
    assert got.index.tolist() == [0, 1, 2] and got.index.name == "trial" and got.name == "meta_accuracy"
    np.testing.assert_allclose(got.to_numpy(), [a[-10:].mean() for a in per_trial])
    np.testing.assert_allclose(final_accuracies(df, last=3).to_numpy(), [a[-3:].mean() for a in per_trial])
    np.testing.assert_allclose(final_accuracies(tmp_path).to_numpy(), got.to_numpy())  # a folder works too
    with pytest.raises(ValueError, match="last"):
        final_accuracies(df, last=0)


def test_final_accuracies_drop_diverged_trials_and_skip_non_finite_values(tmp_path):
    a = np.linspace(0.2, 0.8, 20)
    b = a.copy()
    b[-1] = np.nan  # a skipped, non-finite episode inside the window
    df = _accuracy_history(tmp_path, [a, b, a[:12]], diverged_trial=2)
    got = final_accuracies(df)
    assert got.index.tolist() == [0, 1]  # trial 2 diverged: out, even though it has 12 episodes
    np.testing.assert_allclose(got.to_numpy(), [a[-10:].mean(), np.nanmean(b[-10:])])


def test_final_accuracies_count_a_rewritten_episode_once(tmp_path):
    df = _accuracy_history(tmp_path, [np.full(12, 0.5)])
    dup = df[df["episode"] == 12].assign(meta_accuracy=0.9)
    got = final_accuracies(pd.concat([df, dup], ignore_index=True))
    assert got.iloc[0] == pytest.approx((9 * 0.5 + 0.9) / 10)


def test_final_accuracy_is_the_bootstrap_mean_and_ci_of_the_per_trial_values(tmp_path):
    rng = np.random.default_rng(3)
    per_trial = [0.3 + 0.4 * rng.random(25) for _ in range(6)]
    df = _accuracy_history(tmp_path, per_trial)
    finals = final_accuracies(df).to_numpy()
    for seed in (0, 7):
        expected = tuple(float(v) for v in bootstrap_ci(finals, level=0.98, n_resamples=500, seed=seed))
        assert final_accuracy(df, seed=seed) == expected
    mean, low, high = final_accuracy(df)
    assert low < mean < high and mean == pytest.approx(finals.mean())
    # the notebooks' former computation (pivot, last 10 columns) gives the same numbers
    _, acc, _ = pivot_trials(df, "meta_accuracy")
    assert final_accuracy(df) == tuple(float(v) for v in bootstrap_ci(np.nanmean(acc[:, -10:], axis=1)))


def test_final_accuracy_with_every_trial_diverged_is_nan(tmp_path):
    df = _accuracy_history(tmp_path, [np.full(5, 0.5)], diverged_trial=0)
    assert final_accuracies(df).empty
    assert all(math.isnan(v) for v in final_accuracy(df))


@pytest.mark.parametrize("name, numbers", [
    ("fa_lr", (21.9, 20.6, 23.3)),
    ("bio_20x600", (81.4, 79.4, 83.0)),
    ("pool_20x600", (76.4, 69.0, 80.7)),
    ("kp_lr", (56.2, 52.6, 60.0)),
    ("bio_kp", (64.8, 56.8, 72.7)),
    ("pool_fbpool", (62.9, 51.4, 74.7)),
    ("paper/fa_lr", (23.0, 21.7, 24.1)),
    ("paper/bp_lr", (81.0, 79.0, 83.0)),
    ("paper/dfa_lr", (21.0, 19.9, 22.0)),
    ("paper/usf_lr", (76.2, 74.1, 78.1)),
    ("paper/frsf_lr", (71.8, 69.6, 74.2)),
    ("paper/drtp_lr", (13.5, 11.5, 15.2)),
])
def test_final_accuracy_reproduces_the_readme_table(name, numbers):
    folder = ROOT / "results" / name
    if not (folder / "history.csv").is_file():
        pytest.skip(f"no committed results at {folder}")
    got = tuple(round(100 * v, 1) for v in final_accuracy(folder))
    assert got == numbers


# --------------------------------------------------------------------- theta matrix


def test_theta_matrix_puts_each_term_in_its_column_and_drops_diverged_trials(tmp_path):
    theta = np.zeros((3, 10))
    theta[:, 0] = [1e-3, 2e-3, 3e-3]
    theta[:, 2] = [-0.01, -0.02, -0.03]
    theta[:, 9] = [0.004, 0.005, 0.006]
    theta[:, 5] = 7.0  # not a term of the rule: not written, comes back as 0
    theta[1, 9] = np.nan
    write_theta(tmp_path, theta, [0, 2, 9], [False, False, True])
    full = theta_matrix(tmp_path, include_diverged=True)
    assert full.shape == (3, N_TERMS)
    expected = theta.copy()
    expected[:, 5] = 0.0
    np.testing.assert_array_equal(full, expected)  # NaN where NaN was written
    kept = theta_matrix(tmp_path)
    np.testing.assert_array_equal(kept, expected[:2])
    with pytest.raises(FileNotFoundError, match="theta.json"):
        theta_matrix(tmp_path / "missing")


def test_theta_matrix_rejects_a_malformed_theta_file(tmp_path):
    write_json_atomic(tmp_path / "theta.json", {"terms": [0, 12], "per_trial": [[1.0, 2.0]], "diverged": [False]})
    with pytest.raises(ValueError, match="terms"):
        theta_matrix(tmp_path)
    write_json_atomic(tmp_path / "theta.json", {"terms": [0, 2], "per_trial": [[1.0]], "diverged": [False]})
    with pytest.raises(ValueError, match="trial 0"):
        theta_matrix(tmp_path)


def test_term_survival_counts_exact_zeros_over_non_diverged_trials_and_selects_by_share(tmp_path):
    theta = np.zeros((6, 10))
    theta[:, 0] = 1e-3                        # in all 5 kept trials
    theta[[0, 1, 4], 2] = -0.01               # in 3 of 5
    theta[:3, 9] = 0.004                      # in 3 of 5
    theta[5, :] = 1.0                         # the diverged trial counts for nothing
    write_theta(tmp_path, theta, [0, 2, 9], [False] * 5 + [True])
    got = term_survival(tmp_path)
    assert got["trials"] == 5 and got["survived"] == {0: 5, 2: 3, 9: 3}
    assert got["selected"] == [0]            # 0.8 * 5 = 4 trials needed
    assert term_survival(tmp_path, keep=0.6)["selected"] == [0, 2, 9]
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        term_survival(tmp_path, keep=0)
    with pytest.raises(ValueError, match="no phi"):
        term_survival(tmp_path, coefficients="phi")


def test_term_survival_of_the_feedback_terms_counts_phi(tmp_path):
    phi = np.zeros((4, 4))
    phi[:, 0] = 0.01                          # Kolen-Pollack in every trial
    phi[0, 3] = -1e-4                         # Oja-like in one
    write_theta(tmp_path, np.full((4, 10), 1e-3), [0], [False] * 4, phi=phi, feedback_terms=[0, 1, 3])
    got = term_survival(tmp_path, coefficients="phi")
    assert got["survived"] == {0: 4, 1: 0, 3: 1} and got["selected"] == [0]
    with pytest.raises(ValueError, match='"theta" or "phi"'):
        term_survival(tmp_path, coefficients="B")


def test_theta_matrix_of_a_committed_run_matches_its_theta_json():
    folder = ROOT / "results" / "bio"
    if not (folder / "theta.json").is_file():
        pytest.skip(f"no committed results at {folder}")
    th = read_theta(folder)
    full = theta_matrix(folder)
    assert full.shape == (th["n_trials_used"], N_TERMS)
    for r in range(N_TERMS):
        if r in th["terms"]:
            assert full[:, r].mean() == pytest.approx(th["mean"][f"theta_{r}"])
        else:
            assert (full[:, r] == 0).all()


def test_run_table_reports_each_run_as_final_accuracy_final_values_and_theta_json_do():
    folders = [ROOT / "results" / n for n in ("bio_20x600", "bio_kp")]
    if not all((f / "theta.json").is_file() for f in folders):
        pytest.skip("no committed results for bio_20x600 / bio_kp")
    table = run_table(folders, labels=["fixed B", "plastic B"]).set_index("run")
    for label, folder in zip(["fixed B", "plastic B"], folders):
        row = table.loc[label]
        assert (row.accuracy, row.ci_low, row.ci_high) == final_accuracy(folder)
        assert row.alpha_4 == pytest.approx(final_values(folder, "alpha_4").mean())
        assert row.theta_2 == read_theta(folder)["mean"]["theta_2"]
        assert (row.trials, row.episodes) == (20, 600)
    assert table.loc["fixed B", "feedback"] == "fa" and np.isnan(table.loc["fixed B", "phi_1"])
    assert table.loc["plastic B", "feedback"] == "fa + kp" and table.loc["plastic B", "phi_1"] < 0
    assert table.loc["plastic B", "diverged"] == 2
    with pytest.raises(ValueError, match="one label per folder"):
        run_table(folders, labels=["only one"])


def test_run_table_writes_a_per_layer_rule_as_the_command_line_takes_it(tmp_path):
    w = HistoryWriter(tmp_path, 3)
    w.append([_row(0, 1), _row(0, 2)])
    write_theta(tmp_path, np.full((1, 10), 1e-3), [0, 2], [False])
    write_config(tmp_path, {"rule": "per-layer", "feedback": "fa", "layer_terms": [[0], [0, 2], [0, 2]]})
    row = run_table([tmp_path]).iloc[0]
    assert row.rule == "0/0,2/0,2" and row.feedback == "fa"
    assert row.alpha_1 == 80.0 and row.ortho_3 == 1.0 and row.accuracy == pytest.approx(0.215)


def test_final_values_of_other_columns_follow_the_same_rules(tmp_path):
    w = HistoryWriter(tmp_path, 3)
    w.append([_row(t, e, alpha_2=float(e + t)) for t in range(2) for e in range(1, 16)]
             + [_row(2, 1, alpha_2=5.0, diverged=1)])
    got = final_values(tmp_path, "alpha_2", last=5)
    assert got.index.tolist() == [0, 1] and got.name == "alpha_2"
    np.testing.assert_allclose(got.to_numpy(), [13.0, 14.0])  # episodes 11..15, plus t
    with pytest.raises(KeyError, match="alpha_7"):
        final_values(tmp_path, "alpha_7")


def test_config_records_the_command_line_and_whether_the_checkout_was_clean(tmp_path, monkeypatch):
    from labkit.cli import main
    from labkit.meta import COMMAND_ENV, MetaConfig, MetaTrainer

    monkeypatch.delenv(COMMAND_ENV, raising=False)
    out = tmp_path / "cli"
    argv = ["discover", "--rule", "fa", "--trials", "1", "--episodes", "1", "--K", "2", "--Q", "1",
            "--compile", "off", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "labkit " + " ".join(argv)
    assert config["versions"]["git_dirty"] in (True, False, None)
    assert COMMAND_ENV not in os.environ  # the CLI's command does not leak into later runs
    MetaTrainer(MetaConfig(rule="fa", trials=1, episodes=1, K=2, Q=1), out=tmp_path / "api").run(progress=False)
    api = json.loads((tmp_path / "api" / "config.json").read_text())
    assert api["command"] != config["command"] and api["command"]  # this process's own argv
