use entities::prelude::*;

pub struct Mailer;

// Orchestrations are replayed and must stay deterministic: they reach services through
// activities, not through their context.
async fn workflow(ctx: OrchestrationContext, _input: ()) -> entities::Result<()> {
    let _mailer = ctx.service::<Mailer>();
    Ok(())
}

fn main() {
    let _ = Runtime::builder().orchestration("workflow", workflow);
}
