import pytest

from model_fixtures import read_rows, write_dataset
from signq.storage import Storage
from worker import training, tuning
from worker.training import TrainSpec
from worker.tuning import TuneSpec


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    st = Storage(str(root / "s"))
    write_dataset(st, "mini", *read_rows(300))
    return st, root


def test_samples_are_seeded_and_inside_the_declared_space():
    points = [tuning.sample(5, i) for i in range(20)]
    assert points == [tuning.sample(5, i) for i in range(20)]
    assert points != [tuning.sample(6, i) for i in range(20)]
    for p in points:
        assert p["filters"] in (8, 16, 32) and 64 <= p["dense_units"] <= 512 and p["dense_units"] % 64 == 0
        assert 0.2 <= p["dropout"] <= 0.6 and 1e-4 <= p["learning_rate"] <= 1e-2
        assert isinstance(p["augment"], bool)
    assert len({p["augment"] for p in points}) == 2 and len({p["filters"] for p in points}) > 1


def test_plans():
    assert tuning.plan(TuneSpec.from_json({"datasets": ["d"], "max_trials": 4, "max_epochs": 5})) == [(4, 5)]
    hb = TuneSpec.from_json({"datasets": ["d"], "algorithm": "hyperband", "max_trials": 9, "max_epochs": 9})
    assert tuning.plan(hb) == [(9, 1), (3, 3), (1, 9)]


def test_bad_specs_say_what_was_received():
    with pytest.raises(ValueError, match="Received: 'bayes'"):
        TuneSpec.from_json({"datasets": ["d"], "algorithm": "bayes"})
    with pytest.raises(ValueError, match="at least one dataset"):
        TuneSpec.from_json({"datasets": []})


def test_distributed_hyperband_rounds_then_train_with_best(store):
    st, root = store
    spec = TuneSpec.from_json({"datasets": ["mini"], "algorithm": "hyperband", "max_trials": 4, "max_epochs": 2,
                               "factor": 2, "batch_size": 32, "arch": "regularized"})
    assert tuning.plan(spec) == [(4, 1), (2, 1), (1, 2)]
    trials, round_ = tuning.start(st, "t1", spec), 0
    while trials:
        for t in trials:                                # each of these is one tune_trial task on some worker
            assert not tuning.round_done(st, "t1", round_)
            tuning.run_trial(st, "t1", t["trial_id"], str(root / "work"))
        assert tuning.round_done(st, "t1", round_)
        trials, round_ = tuning.advance(st, "t1", round_), round_ + 1
    assert round_ == 3 and len(tuning.results(st, "t1")) == 7
    best = st.read_json(tuning.tune_dir(st, "t1") + "/best.json")
    assert best["val_accuracy"] == max(r["val_accuracy"] for r in tuning.results(st, "t1"))
    hp = tuning.best_hparams(st, "t1")
    assert hp["arch"] == "regularized" and set(hp) >= {"filters", "dense_units", "dropout", "learning_rate", "augment"}
    tspec = TrainSpec.from_json({"datasets": ["mini"], "hparams_from": "t1", "hparams": {"dense_units": 64}})
    effective = training.effective_hparams(st, tspec)
    assert effective["dense_units"] == 64 and effective["learning_rate"] == hp["learning_rate"]


def test_rerun_trial_returns_stored_result(store):
    st, root = store
    spec = TuneSpec.from_json({"datasets": ["mini"], "max_trials": 1, "max_epochs": 1, "batch_size": 64})
    (t,) = tuning.start(st, "t2", spec)
    first = tuning.run_trial(st, "t2", t["trial_id"], str(root / "work2"))
    assert tuning.run_trial(st, "t2", t["trial_id"], str(root / "work2")) == first


def test_unknown_tune_id(store):
    st, _ = store
    with pytest.raises(ValueError, match="no best.json"):
        tuning.best_hparams(st, "never")


def test_in_process_keras_tuner_random_search(store):
    st, root = store
    spec = TuneSpec.from_json({"datasets": ["mini"], "max_trials": 2, "max_epochs": 1, "batch_size": 64})
    best = tuning.run_keras_tuner(st, "kt1", spec, str(root / "kt"))
    assert best["trials"] == 2 and 0 <= best["val_accuracy"] <= 1
    assert tuning.best_hparams(st, "kt1")["dense_units"] in range(64, 513, 64)
