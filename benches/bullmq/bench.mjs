// BullMQ's one-job-per-call path, measured the way `nova bench queue --batch 1`
// measures nova's: producers add jobs one at a time (each add awaited), a
// worker with the given concurrency runs an empty processor, and the clock
// stops when the last job has completed.
//
// node bench.mjs PORT [TASKS] [PRODUCERS] [CONCURRENCY]
import { Queue, Worker } from 'bullmq';

const [port, tasks = 20000, producers = 2, concurrency = 50] = process.argv
  .slice(2)
  .map(Number);
if (!port) {
  console.error('usage: node bench.mjs PORT [TASKS] [PRODUCERS] [CONCURRENCY]');
  process.exit(2);
}
const connection = { host: '127.0.0.1', port };
const name = `nova-bench-${process.pid}`;
const queue = new Queue(name, { connection });

let completed = 0;
let allDone;
const finished = new Promise((resolve) => (allDone = resolve));
const start = performance.now();
const worker = new Worker(name, async () => {}, { connection, concurrency });
worker.on('completed', () => {
  if (++completed === tasks) allDone();
});
worker.on('failed', (job, err) => {
  console.error(`job ${job?.id} failed: ${err}`);
  process.exit(1);
});

const share = Math.ceil(tasks / producers);
await Promise.all(
  Array.from({ length: producers }, async (_, p) => {
    const n = Math.max(0, Math.min(share, tasks - p * share));
    for (let i = 0; i < n; i++) {
      await queue.add('bench', { producer: p, i });
    }
  }),
);
await finished;
const seconds = (performance.now() - start) / 1000;
console.log(
  JSON.stringify({ system: 'bullmq', tasks, producers, concurrency, seconds, per_second: tasks / seconds }),
);
await worker.close();
await queue.obliterate({ force: true });
await queue.close();
