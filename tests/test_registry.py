"""Every registry of pipeline.schema: builders that load, valid presets, unknown names that list the choices.

Generated from the registries, so a newly registered component is enrolled here (and in the
per-kind tests of test_models, test_losses, test_features, test_blend) without editing a table.
"""

import dataclasses
import os
import subprocess
import sys

import pytest

from pipeline import schema
from pipeline.data import load_dataset, needs_generation
from pipeline.errors import DataError, QueueError
from pipeline.registry import Entry, Registry, UnknownNameError

REGISTRIES = {**schema.COMPONENT_SECTIONS, "blend": schema.BLEND_METHODS}
ENTRIES = [pytest.param(section, entry, id=f"{section}:{entry.name}")
           for section, registry in REGISTRIES.items() for entry in registry.entries()]


@pytest.mark.parametrize("section, entry", ENTRIES)
def test_every_entry_loads_its_builder_and_preset(section, entry):
    assert dataclasses.is_dataclass(entry.params) and entry.params.__dataclass_params__.frozen
    assert callable(entry.load())  # a mistyped import path fails here, not in a run
    tiny = entry.tiny()  # the preset's keys exist and its values pass the class
    assert isinstance(tiny, entry.params)
    if section == "model":
        assert entry.check is None or callable(entry.load_check())
        assert entry.preset_inputs, f"model {entry.name!r} needs preset_inputs for the generated model tests"
        assert set(entry.features) <= set(schema.FEATURES)
        assert isinstance(entry.describe(tiny), str)


@pytest.mark.parametrize("section", list(REGISTRIES))
def test_unknown_names_list_the_choices(section):
    registry = REGISTRIES[section]
    with pytest.raises(UnknownNameError) as err:
        registry["no_such_name"]
    assert isinstance(err.value, QueueError) and not isinstance(err.value, KeyError)
    assert str(err.value) == f"'no_such_name' is not a {registry.kind}; choose one of: {', '.join(registry)}"
    assert "no_such_name" not in registry and ["x"] not in registry  # unhashable: not a name, no TypeError


def test_a_model_kind_must_be_one_the_fold_job_trains():
    """ModelEntry.kind decides how run_fold_job trains a family (keras: epoch loop; sklearn: one fit)."""
    from pipeline.registry import MODEL_KINDS, ModelEntry

    assert {schema.MODELS[name].kind for name in schema.MODELS} == set(MODEL_KINDS)
    with pytest.raises(ValueError, match="kind must be one of"):
        ModelEntry("forest", schema.HGBParams, "pipeline.models.classical:build_hgb", kind="torch")


def test_a_name_is_registered_once():
    entry = Entry("mean", schema.MeanBlendParams, "pipeline.blend:blend_mean")
    with pytest.raises(ValueError, match="blend method 'mean' is registered twice"):
        Registry("blend method", [entry, entry])


def test_validating_a_queue_imports_no_tensorflow():
    """The registries name builders by import path, so reading them never imports a builder's module."""
    code = ("import sys; from pipeline.config import load_queue; load_queue('experiments.yaml'); "
            "load_queue('experiments_rfcx.yaml'); print(sorted(m for m in ('tensorflow', 'keras', 'pipeline.models.sed', "
            "'pipeline.losses', 'pipeline.blend') if m in sys.modules))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("entry", schema.DATA_SOURCES.entries(), ids=lambda e: e.name)
def test_every_data_source_reads_its_preset_or_names_the_missing_layout(tmp_path, entry):
    """A generated source writes and reads its tiny preset; a reader refuses an empty folder with a DataError."""
    fields = {f.name for f in dataclasses.fields(entry.params)}
    paths = {"root": str(tmp_path / "data")} if "root" in fields else {
        "csv": str(tmp_path / "train.csv"), "audio_dir": str(tmp_path / "audio")}
    params = entry.tiny(**paths)
    if needs_generation(entry.name, params):
        dataset = load_dataset(entry.name, params)
        assert len(dataset.train) == params.n_train and len(dataset.test) == params.n_test
        assert set(dataset.targets) <= set(dataset.train.columns)
    else:
        with pytest.raises(DataError, match=str(tmp_path)):
            load_dataset(entry.name, params)
