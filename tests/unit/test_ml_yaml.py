"""The pipeline YAMLs load with azure-ai-ml, are wired as designed, and agree with the scripts."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from azure.ai.ml import load_component, load_job
from azure.ai.ml.entities import CommandComponent, PipelineComponent, PipelineJob
from mlmodules import load_ml_module

# azure-ai-ml's schemas use a marshmallow feature that is deprecated; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated")

ML = Path(__file__).resolve().parents[2] / "ml"
SRC = ML / "src"
STEPS = ("prep", "train", "evaluate")
_FLAG = re.compile(r"--(\w+) \$\{\{(inputs|outputs)\.(\w+)\}\}")


def _script(step: str) -> ModuleType:
    """Import a step script as Azure ML runs it: with ml/src as the working folder on sys.path."""
    return load_ml_module(SRC / f"{step}.py", f"ml_step_{step}")


@pytest.fixture(scope="module")
def components() -> dict[str, CommandComponent]:
    return {step: load_component(ML / "components" / f"{step}.yml") for step in STEPS}


@pytest.fixture(scope="module")
def pipeline() -> PipelineJob:
    return load_job(ML / "pipeline.yml")


def _binding(value: Any) -> Any:
    """What a step input or output is bound to in the YAML (None: unbound)."""
    return value._data


class TestComponents:
    @pytest.mark.parametrize("step", STEPS)
    def test_component_is_a_named_command_with_code_and_conda_environment(
        self, components: dict[str, CommandComponent], step: str
    ) -> None:
        """Each component is autoretrain_<step> v1, runs from ml/src, in the shared conda environment."""
        component = components[step]
        assert (component.type, component.name, component.version) == ("command", f"autoretrain_{step}", "1")
        assert (Path(component.base_path) / component.code).resolve() == SRC
        assert component.environment.image == "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
        pip = component.environment.conda_file["dependencies"][-1]["pip"]
        assert {re.split(r"[<>=]", p)[0] for p in pip} >= {"scikit-learn", "pandas", "mlflow-skinny", "skops"}
        assert component.command.startswith(f"python {step}.py ")

    @pytest.mark.parametrize("step", STEPS)
    def test_every_flag_is_a_declared_input_or_output_and_every_one_is_passed(
        self, components: dict[str, CommandComponent], step: str
    ) -> None:
        """The command passes each input and output once, as a flag of the same name."""
        component = components[step]
        flags = _FLAG.findall(component.command)
        assert all(flag == name for flag, _, name in flags)
        passed = sorted((kind, name) for _, kind, name in flags)
        declared = sorted(
            [("inputs", n) for n in component.inputs] + [("outputs", n) for n in component.outputs]
        )
        assert passed == declared
        assert len(component.command.split()) == 2 + 2 * len(flags)

    @pytest.mark.parametrize("step", STEPS)
    def test_script_parser_takes_exactly_the_yaml_names_with_the_yaml_defaults(
        self, components: dict[str, CommandComponent], step: str
    ) -> None:
        """build_parser() has one option per input/output; a YAML default is the script default."""
        component = components[step]
        parser: argparse.ArgumentParser = _script(step).build_parser()
        options = {a.dest: a for a in parser._actions if a.option_strings}
        options.pop("help")
        assert sorted(options) == sorted([*component.inputs, *component.outputs])
        for name, spec in component.inputs.items():
            assert options[name].default == spec.default
            assert options[name].required == (spec.default is None and not spec.optional)

    @pytest.mark.parametrize("step", STEPS)
    def test_parsed_command_line_calls_main_with_its_parameters(
        self, components: dict[str, CommandComponent], step: str
    ) -> None:
        """The YAML command, with values filled in, parses into exactly main()'s keyword arguments."""
        component = components[step]
        module = _script(step)
        sample = {"number": "0.5", "integer": "1"}

        def value(match: re.Match[str]) -> str:
            kind, name = match[1], match[2]
            if kind == "inputs" and component.inputs[name].enum:  # a string input takes one of its values
                return str(component.inputs[name].enum[-1])
            return sample.get(component.inputs[name].type, f"x/{name}") if kind == "inputs" else f"x/{name}"

        # $[[ ... ]] (an optional input's flags) is kept here: every parameter is given.
        command = re.sub(r"\$\[\[(.*?)\]\]", r"\1", component.command)
        filled = re.sub(r"\$\{\{(inputs|outputs)\.(\w+)\}\}", value, command).split()[2:]
        parsed = vars(module.parse_args(filled))
        assert sorted(parsed) == sorted(inspect.signature(module.main).parameters)


class TestPipeline:
    def test_pipeline_job_has_the_three_steps_on_the_placeholder_compute(self, pipeline: PipelineJob) -> None:
        """pipeline.yml is a pipeline job of prep, train and evaluate in the autoretrain experiment."""
        assert isinstance(pipeline, PipelineJob)
        assert isinstance(pipeline.component, PipelineComponent)
        assert list(pipeline.jobs) == list(STEPS)
        assert (pipeline.experiment_name, pipeline.settings.default_compute) == ("autoretrain", "cpu-cluster")

    def test_pipeline_defaults_point_at_shipped_files(self, pipeline: PipelineJob) -> None:
        """The placeholder data and contract inputs exist, so the YAML runs as it is."""
        for name, kind, relative, file in (("data", "mltable", "./sample/trainset", "MLTable"),
                                           ("contract", "uri_file", "./contract.yaml", "")):
            given = pipeline.inputs[name]._data
            assert (given.type, given.path) == (kind, relative)
            assert (Path(pipeline.base_path) / relative / file).is_file()
        assert {n: o.type for n, o in pipeline.outputs.items()} == {
            "model": "mlflow_model", "metrics": "uri_folder", "report": "uri_folder",
        }

    def test_steps_are_wired_parent_inputs_to_prep_to_train_to_evaluate(self, pipeline: PipelineJob) -> None:
        """Each step input is bound to a pipeline input or an earlier step's output; defaults are unbound."""
        wiring = {
            name: {k: _binding(v) for k, v in step.inputs.items()} for name, step in pipeline.jobs.items()
        }
        assert wiring == {
            "prep": {
                "data": "${{parent.inputs.data}}",
                "contract": "${{parent.inputs.contract}}",
                "test_fraction": None,
                "seed": None,
                "train_last": "${{parent.inputs.train_last}}",
                "new_files": "${{parent.inputs.new_files}}",
                "mode": "${{parent.inputs.mode}}",
            },
            "train": {
                "train_data": "${{parent.jobs.prep.outputs.train_data}}",
                "contract": "${{parent.inputs.contract}}",
                "seed": None,
                "mode": "${{parent.inputs.mode}}",
            },
            "evaluate": {
                "model": "${{parent.jobs.train.outputs.model}}",
                "test_data": "${{parent.jobs.prep.outputs.test_data}}",
                "contract": "${{parent.inputs.contract}}",
                "champion": "${{parent.inputs.champion}}",
                "mode": "${{parent.inputs.mode}}",
            },
        }

    def test_step_outputs_reach_the_pipeline_outputs(self, pipeline: PipelineJob) -> None:
        """report, model and metrics are pipeline outputs; the splits stay inside the pipeline."""
        bound = {
            (name, out): _binding(o)
            for name, step in pipeline.jobs.items()
            for out, o in step.outputs.items()
        }
        assert bound == {
            ("prep", "train_data"): None,
            ("prep", "test_data"): None,
            ("prep", "report"): "${{parent.outputs.report}}",
            ("train", "model"): "${{parent.outputs.model}}",
            ("evaluate", "metrics"): "${{parent.outputs.metrics}}",
        }

    def test_steps_in_the_pipeline_are_the_component_files(
        self, pipeline: PipelineJob, components: dict[str, CommandComponent]
    ) -> None:
        """Each step runs its component file's command from ml/src."""
        for name, step in pipeline.jobs.items():
            assert step.component.command == components[name].command
            assert (Path(step.component.base_path) / step.component.code).resolve() == SRC
