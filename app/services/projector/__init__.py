"""The projector: applies the document stream to the index as consumer group `indexer`.

Delivery is at least once, so applying must be idempotent, and entries may arrive out of
order (a claimed entry of a dead consumer is older than what was applied since), so applying
must be ordered by stream id per document:

- every document's applied record (app/domain/doc_status.py) names the newest entry the index
  reflects; an entry not newer than that is skipped, so an old upsert never overwrites a
  newer version and never resurrects a deleted document;
- point ids are deterministic (tenant, doc id, chunk index) and a new version's chunks are
  written before the other versions' are dropped, so applying an entry twice, or a crash
  anywhere in between, leaves the same points;
- an entry is acknowledged only after the index writes returned (Edge flushes before it
  returns) and the applied record is stored; a crash before that means redelivery.

A batch's upserts are chunked, looked up in the embedding cache and embedded together, so the
embedder sees large batches across documents. When a batch fails, its entries are applied one
by one to find the culprits; an entry that keeps failing (or that was delivered more than
RAG_PROJECTOR_MAX_DELIVERIES times without finishing, e.g. because it kills the process) is
moved to the dead-letter stream with the error and acknowledged, so it cannot block the rest.
Failures while the index itself does not answer, or while the embeddings API cannot embed
(EmbedderUnavailable), are an outage, not poison: nothing is dead-lettered, the entries wait
and are retried with backoff. While the embedder's circuit breaker is open (`pause`), the
projector takes no new entries at all: they wait in the stream, undelivered, and are
applied once a probe finds the API back.

The modules, in the order an entry meets them:

- loop.py: `Projector`, the loop that reads, claims and retries until stopped;
- claims.py: taking over entries of dead consumers, and forgetting those consumers;
- delivery.py: one delivered batch, each entry acknowledged, struck, held or dead-lettered;
- retry.py: what waits for a retry (held through an outage), and the backoff until then;
- dead_lettering.py: moving an entry given up on to the dead-letter stream;
- apply.py: ordering and applying entries (compare-and-set of applied records, sweeps);
- embedding.py: embedding chunks, cache first, and writing them as points;
- config.py: the group name, the configuration and the counts.
"""

from app.services.projector.config import GROUP, ProjectorConfig, ProjectorCounts
from app.services.projector.loop import Projector

__all__ = ["GROUP", "Projector", "ProjectorConfig", "ProjectorCounts"]
