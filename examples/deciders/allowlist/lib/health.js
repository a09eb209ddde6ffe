'use strict';
// gRPC health (grpc.health.v1) as the protocol defines it: Check answers
// the current status of a known service and NOT_FOUND for others; Watch
// sends the current status at once (SERVICE_UNKNOWN for an unknown
// service) and again whenever it changes.

const grpc = require('@grpc/grpc-js');

class Health {
  /** statuses maps service names ('' is the whole server) to a status. */
  constructor(statuses) {
    this.statuses = new Map(Object.entries(statuses));
    this.watchers = new Set();
  }

  /** set changes the status of every known service. */
  setAll(status) {
    for (const name of this.statuses.keys()) this.statuses.set(name, status);
    for (const w of this.watchers) w.update();
  }

  /** implementation is the service's handlers for grpc.Server.addService. */
  implementation() {
    return {
      Check: (call, callback) => {
        const status = this.statuses.get(call.request.service);
        if (status === undefined) {
          callback({ code: grpc.status.NOT_FOUND, details: `unknown service ${JSON.stringify(call.request.service)}` });
          return;
        }
        callback(null, { status });
      },
      Watch: (call) => {
        let last = null;
        const w = {
          update: () => {
            const status = this.statuses.get(call.request.service) ?? 'SERVICE_UNKNOWN';
            if (status !== last) {
              last = status;
              call.write({ status });
            }
          },
        };
        this.watchers.add(w);
        call.on('cancelled', () => this.watchers.delete(w));
        call.on('close', () => this.watchers.delete(w));
        w.update();
      },
    };
  }

  /** close ends every Watch stream (the server is going away). */
  close() {
    this.watchers.clear();
  }
}

module.exports = { Health };
