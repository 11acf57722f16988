//! Per-worker task queues, by list scheduling on a cost model.
//!
//! Tasks are taken in a topological order (the ready task that comes first in the graph goes
//! first) and each is given to the worker that can start it earliest, given when the tasks it
//! waits for finish. Every queue is therefore a subsequence of one global topological order, which
//! is what makes the schedule deadlock-free on any interleaving: the earliest unfinished task in
//! that order has all its producers finished and every task before it in its own queue finished,
//! so its worker can always run it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use crate::plan::{Event, Task};

/// What the cost model knows about the machine.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Workers: one block per SM.
    pub workers: usize,
    /// Device memory bandwidth, GB/s, shared by all workers.
    pub bandwidth_gbs: f64,
    /// Tensor-core rate, TFLOP/s, shared by all workers.
    pub tflops: f64,
    /// Fixed cost of one task (waiting, first loads), microseconds.
    pub task_overhead_us: f64,
}

impl Machine {
    /// An H100 SXM: 132 SMs, about 3.0 TB/s, about 800 TFLOP/s bf16.
    pub fn h100() -> Machine {
        Machine {
            workers: 132,
            bandwidth_gbs: 3000.0,
            tflops: 800.0,
            task_overhead_us: 1.0,
        }
    }

    /// A task's duration in microseconds when every worker is busy (each gets its share).
    pub fn task_us(&self, task: &Task) -> f64 {
        let w = self.workers as f64;
        task.bytes / (self.bandwidth_gbs * 1e3 / w)
            + task.flops / (self.tflops * 1e6 / w)
            + self.task_overhead_us
    }
}

/// The queues, and the cost model's estimate of the step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Task ids per worker, in the order the worker runs them.
    pub queues: Vec<Vec<usize>>,
    /// One global topological order of all tasks; every queue is a subsequence of it.
    pub order: Vec<usize>,
    /// Estimated step time, microseconds.
    pub makespan_us: f64,
}

/// The producers each task waits for.
pub fn dependencies(tasks: &[Task], events: &[Event]) -> Vec<Vec<usize>> {
    tasks
        .iter()
        .map(|t| {
            let mut deps: Vec<usize> = t
                .waits
                .iter()
                .flat_map(|&e| events[e].producers.iter().copied())
                .collect();
            deps.sort_unstable();
            deps.dedup();
            deps
        })
        .collect()
}

/// Schedules `tasks` on `machine.workers` workers; `None` if the tasks wait on each other in a
/// cycle (a bug in the passes before, never a property of the model).
pub fn schedule(tasks: &[Task], events: &[Event], machine: &Machine) -> Option<Schedule> {
    let deps = dependencies(tasks, events);
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    for (t, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(t);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..tasks.len())
        .filter(|&t| waiting[t] == 0)
        .map(Reverse)
        .collect();
    let mut finish = vec![0.0f64; tasks.len()];
    let mut free_at = vec![0.0f64; machine.workers];
    let mut queues = vec![Vec::new(); machine.workers];
    let mut order = Vec::with_capacity(tasks.len());
    while let Some(Reverse(t)) = ready.pop() {
        let deps_done = deps[t].iter().map(|&d| finish[d]).fold(0.0, f64::max);
        // The worker that can start it soonest; ties go to the lowest index.
        let (w, start) = free_at
            .iter()
            .enumerate()
            .map(|(w, &f)| (w, f.max(deps_done)))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
            .expect("at least one worker");
        finish[t] = start + machine.task_us(&tasks[t]);
        free_at[w] = finish[t];
        queues[w].push(t);
        order.push(t);
        for &d in &dependents[t] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push(Reverse(d));
            }
        }
    }
    (order.len() == tasks.len()).then(|| Schedule {
        queues,
        order,
        makespan_us: free_at.iter().copied().fold(0.0, f64::max),
    })
}
