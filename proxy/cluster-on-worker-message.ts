/**
 * The primary's side of what a worker says beyond its readiness
 * (cluster-supervisor.ts), each message handed to the part it concerns: a
 * worker that starts gets the ticket ring, the serving state and the ACME
 * board; acknowledgements go to the serving distribution, the ticket ring and
 * the challenge board; an on-demand name to ACME. A worker that could not
 * apply a delta is replaced. The messages themselves are cluster-messages.ts.
 */
import type { Worker } from 'node:cluster';
import { boardAppliedGeneration } from './acme/challenges.js';
import type { Logger } from '../keyserver/shared/log.js';
import { unexpectedReason } from './acme/on-demand.js';
import { wantedClient, wantedName } from './acme/on-demand-names.js';
import type { RunningAcme } from './acme/service.js';
import type { ChallengeBoard } from './cluster-acme.js';
import { applyMessage, isAppliedMessage, isMessage, PACK_OPENED, SHUTDOWN, serveMessage, TICKET_KEYS_APPLIED, WANT_TICKET_KEY } from './cluster-messages.js';
import { sendToWorker } from './cluster-metrics.js';
import type { Serving } from './cluster-serving.js';
import type { WorkerSupervisor } from './cluster-supervisor.js';
import type { Tickets } from './cluster-tickets.js';

/** What a worker says beyond its readiness (cluster-supervisor.ts): it wants its start state, or acknowledges something. */
export function onWorkerMessage(
  worker: Worker,
  message: unknown,
  {
    supervisor,
    serving,
    ticketRing,
    board,
    acme,
    log,
  }: { supervisor: WorkerSupervisor; serving: Serving; ticketRing: Tickets; board: ChallengeBoard; acme: RunningAcme | undefined; log: Logger },
): void {
  if (isMessage(message, WANT_TICKET_KEY.type)) {
    // Stopping already: the shutdown sent to it may have come before it listened for messages, and been lost. It
    // serves nothing yet and has no SIGTERM handler: it ends at once, instead of starting and waiting for the SIGKILL.
    if (supervisor.stopping) return void worker.process.kill('SIGTERM');
    sendToWorker(worker, ticketRing.message());
    // The committed state, then the delta being applied (if any): IPC
    // keeps order, so the worker ends up where every other worker is.
    sendToWorker(worker, serveMessage(serving.wire('snapshot', serving.snapshot(), worker)));
    const inFlight = serving.inFlight();
    if (inFlight !== undefined) sendToWorker(worker, applyMessage(serving.wire('delta', inFlight, worker)));
    if (acme !== undefined) sendToWorker(worker, acme.board.message());
    serving.synced.add(worker);
  } else if (isMessage(message, PACK_OPENED)) {
    serving.packs.opened(worker, String((message as { file?: unknown }).file));
  } else if (isMessage(message, TICKET_KEYS_APPLIED)) {
    ticketRing.applied(worker, Number((message as { generation?: unknown }).generation));
  } else if (wantedName(message) !== undefined) {
    const name = wantedName(message) ?? '';
    // The gate answers every name (a failure of its own is a refusal, on-demand.ts); should it still reject, that is
    // logged here rather than left an unhandled rejection, which stops the primary and every worker with it. The worker
    // waits for no answer (its handshake never does): it reports the name again after its interval.
    acme?.onDemand
      ?.wanted(name, wantedClient(message))
      .catch((err: unknown) =>
        log.error(
          { name, worker: worker.id, reason: unexpectedReason(err) },
          'on-demand certificate not checked: the check failed unexpectedly; refused this time',
        ),
      );
  } else if (boardAppliedGeneration(message) !== undefined) {
    board.applied(worker, boardAppliedGeneration(message) ?? -1);
  } else if (isAppliedMessage(message)) {
    serving.acks.get(worker)?.(message);
    // A worker that could not apply a delta is behind the others: replace it, and its successor starts from the committed state.
    if (message.error !== undefined) sendToWorker(worker, SHUTDOWN);
  }
}
