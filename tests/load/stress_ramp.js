// k6 stress test: ramps allocation load from 0 to 200 virtual users and back,
// to find where latency bends and whether errors appear under overload.
//
//   BROKER_URL=http://127.0.0.1:8080 BROKER_API_TOKEN=... k6 run tests/load/stress_ramp.js
//
// Environment: BROKER_URL, BROKER_API_TOKEN, API_BASE_PATH (default /v1),
// MAX_VUS (default 200), STAGE (length of each ramp stage, default 20s),
// RUN_ID. The pool must outlast the run (each iteration allocates one
// sandbox): at 64 clients and 2,000 allocations/s a 100 s run takes 200,000.
// A 409 (pool empty) or 429 (rate limited: set RATE_LIMIT_RPS=0 on the
// broker) counts as a failure.
import http from 'k6/http';
import { check } from 'k6';
import { Trend } from 'k6/metrics';
import exec from 'k6/execution';

const BASE = (__ENV.BROKER_URL || 'http://127.0.0.1:8080') + (__ENV.API_BASE_PATH || '/v1');
const TOKEN = __ENV.BROKER_API_TOKEN || '';
const MAX = parseInt(__ENV.MAX_VUS || '200', 10);
const STAGE = __ENV.STAGE || '20s';
const RUN_ID = __ENV.RUN_ID || `k6-stress-${Date.now()}`;

const allocLatency = new Trend('allocate_latency', true);

export const options = {
  scenarios: {
    ramp: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: STAGE, target: Math.round(MAX / 4) },
        { duration: STAGE, target: Math.round(MAX / 2) },
        { duration: STAGE, target: MAX },
        { duration: STAGE, target: MAX },
        { duration: STAGE, target: 0 },
      ],
      gracefulRampDown: '5s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    allocate_latency: ['p(99)<250'],
  },
};

export function setup() {
  if (!TOKEN) {
    throw new Error('set BROKER_API_TOKEN');
  }
}

export default function () {
  const owner = `${RUN_ID}-vu${exec.vu.idInTest}-i${exec.vu.iterationInScenario}`;
  const r = http.post(`${BASE}/allocate`, null, {
    headers: {
      Authorization: `Bearer ${TOKEN}`,
      'X-Instruqt-Sandbox-ID': owner,
      'Idempotency-Key': `key-${owner}`,
    },
    responseCallback: http.expectedStatuses(201),
  });
  if (check(r, { 'allocate: 201 Created': (res) => res.status === 201 })) {
    allocLatency.add(r.timings.duration);
  }
}
