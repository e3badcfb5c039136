//! One Cedar decision with 1,000 policies loaded (DESIGN.md: slices keep a
//! decision in the tens of microseconds at any set size).

#![allow(clippy::panic, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use lanyard_policy::{Action, PolicyBook, Principal, Request, TaskContext};

fn policies(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "@id(\"tool{i}\")\npermit (principal, action == Lanyard::Action::\"UseTool\", resource == Lanyard::Tool::\"tool{i}\")\nwhen {{ context.sensitivity_rank <= 2 && principal.selectors.contains(\"unix:uid:1000\") }};\n"
        ));
    }
    text.push_str(
        "forbid (principal, action, resource) when { context.sensitivity == \"restricted\" };\n",
    );
    text
}

fn bench(c: &mut Criterion) {
    let principal = Principal {
        spiffe_id: "spiffe://td/agent/planner".into(),
        node: "spiffe://td/node/n1".into(),
        selectors: vec!["unix:uid:1000".into(), "unix:gid:1000".into()],
        ..Default::default()
    };
    let context = TaskContext {
        task_type: "report.generate".into(),
        tools: vec!["tool500".into()],
        sensitivity: "internal".into(),
        sensitivity_rank: 1,
        ttl_seconds: 300,
        ..Default::default()
    };
    let mut g = c.benchmark_group("cedar_decision");
    for n in [1usize, 1000] {
        let book = match PolicyBook::compile(&policies(n), "bench.cedar") {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        };
        let tool = format!("tool{}", n / 2);
        g.bench_function(format!("{n}_policies"), |b| {
            b.iter(|| {
                let d = book.decide(&Request {
                    principal: &principal,
                    action: Action::UseTool,
                    resource: &tool,
                    context: &context,
                });
                assert!(d.allowed);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
