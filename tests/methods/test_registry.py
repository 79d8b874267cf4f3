"""Every registered method is whole: its presets load into its config, its search space exists,
names it, addresses only its config's fields and selects on a metric its trials report."""

from __future__ import annotations

import pytest

from emgcore.config import load_yaml, resolve_config
from emgcore.data import PRESETS
from emgcore.methods import METHODS
from orchestration.search_space import apply, load, path_for


@pytest.mark.parametrize("name", sorted(METHODS))
def test_presets_load_into_the_methods_config(name: str) -> None:
    m = METHODS[name]
    assert m.name == name
    for preset in (m.preset, m.smoke_preset):
        assert isinstance(load_yaml(m.config, resolve_config(preset)), m.config)
    assert m.data in PRESETS  # runs with no data of one's own
    assert m.starts_from is None or m.starts_from in METHODS
    assert bool(m.starts_from) == bool(m.pretrained_keys) == bool(m.load_pretrained)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_search_space_addresses_the_methods_config(name: str) -> None:
    m = METHODS[name]
    space = load(path_for(name))
    assert space.method == name
    base = load_yaml(m.config, resolve_config(m.preset))
    for stage in [*space.stages, *space.studies.values()]:
        for key, values in {**stage.grid, **stage.choice}.items():
            for v in values:
                apply(base, {**stage.fixed, key: v})  # raises naming the key when it is not one
    # a study reports the final metric; the selection metric is the search trials'
    assert m.final_metric != space.metric


def test_a_method_name_the_registry_lacks_is_one_line(capsys) -> None:
    from orchestration import sweep

    with pytest.raises(SystemExit) as e:
        sweep.parse(["nosuch"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nosuch'" in err and all(n in err for n in METHODS)
