"""The Event Grid subscriptions: which events reach ingest and completion, with retries and dead letters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infra_trees import _literal, _resources

from autoretrain.domain.events import COMMITTED_APIS


class TestEventSubscriptions:
    def _subscription(self, trees: dict[str, Any], name: str) -> Mapping[str, Any]:
        tree = trees["event-subscriptions.bicep"]
        subs = [
            r
            for r in _resources(tree, "Microsoft.EventGrid/systemTopics/eventSubscriptions").values()
            if r["config"]["name"] == name
        ]
        assert len(subs) == 1, f"one subscription named {name!r} expected"
        return subs[0]["config"]["properties"]

    def test_ingest_gets_committed_blobs_in_incoming_only(self, trees: dict[str, Any]) -> None:
        props = self._subscription(trees, "ingest")
        assert props["destination"]["endpointType"] == "AzureFunction"
        assert props["destination"]["properties"]["resourceId"].endswith("/functions/ingest")
        assert props["filter"]["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
        assert (
            props["filter"]["subjectBeginsWith"]
            == "/blobServices/default/containers/${incomingContainerName}/"
        )
        (api,) = props["filter"]["advancedFilters"]
        # The same committed writes as the function accepts (events.COMMITTED_APIS), SftpCommit too.
        assert (api["operatorType"], api["key"], sorted(api["values"])) == (
            "StringIn", "data.api", sorted(COMMITTED_APIS),
        )

    def test_completion_gets_our_runs_completed_and_failed_or_canceled(self, trees: dict[str, Any]) -> None:
        """RunCompleted of runs with our tag; RunStatusChanged only for Failed and Canceled (which raise
        no RunCompleted). No runType filter: the function identifies runs by the tag and job name."""
        tree = trees["event-subscriptions.bicep"]
        assert tree["variables"]["ourRuns"]["value"] == {
            "operatorType": "IsNotNull", "key": "data.runTags.${runTagKey}",
        }
        completed = self._subscription(trees, "completion")
        failed = self._subscription(trees, "completion-failed")
        for props in (completed, failed):
            assert props["destination"]["properties"]["resourceId"].endswith("/functions/completion")
            assert props["deadLetterWithResourceIdentity"] == "deadLetter"
            assert "runType" not in str(props["filter"])
        assert completed["filter"]["includedEventTypes"] == ["Microsoft.MachineLearningServices.RunCompleted"]
        assert completed["filter"]["advancedFilters"] == ["ourRuns"]
        assert failed["filter"]["includedEventTypes"] == ["Microsoft.MachineLearningServices.RunStatusChanged"]
        ours, status = failed["filter"]["advancedFilters"]
        assert ours == "ourRuns"
        assert (status["operatorType"], status["key"], status["values"]) == (
            "StringIn", "data.runStatus", ["Failed", "Canceled"],
        )
        assert _literal(tree, "runTagKey") == "autoretrain"

    def test_both_retry_and_dead_letter_with_the_topic_identity(self, trees: dict[str, Any]) -> None:
        tree = trees["event-subscriptions.bicep"]
        dead_letter = tree["variables"]["deadLetter"]["value"]
        assert dead_letter["identity"] == {"type": "SystemAssigned"}
        assert dead_letter["deadLetterDestination"]["endpointType"] == "StorageBlob"
        assert _literal(tree, "deadLetterContainerName") == "deadletter"
        for name in ("ingest", "completion", "completion-failed"):
            props = self._subscription(trees, name)
            assert props["deadLetterWithResourceIdentity"] == "deadLetter"
            assert props["retryPolicy"] == "retryPolicy"
