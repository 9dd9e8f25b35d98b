//! `--invoke`: call an agent component's export by name with WAVE-encoded
//! arguments (`read-secret("https://myvault.vault.azure.net", "db")`),
//! the way `wasmtime run --invoke` does, in the agent's own store.

use anyhow::Result;
use wasmtime::Store;
use wasmtime::component::wasm_wave::untyped::UntypedFuncCall;
use wasmtime::component::{Component, Instance, Val};

/// Call `call` on `instance`, as `vd-cred run-agent --invoke` does:
/// `name(args)` with WAVE-encoded arguments, `name` a root export or a
/// function in an exported interface. Its results.
pub async fn invoke<T: Send>(
    component: &Component,
    instance: &Instance,
    mut store: &mut Store<T>,
    call: &str,
) -> Result<Vec<Val>> {
    use wasmtime::component::types::ComponentItem;
    let call = UntypedFuncCall::parse(call).map_err(|e| anyhow::anyhow!("{call}: {e}"))?;
    let engine = store.engine().clone();
    let name = call.name().to_string();
    let mut index = instance.get_export_index(&mut store, None, &name);
    for (export, item) in component.component_type().exports(&engine) {
        if index.is_some() {
            break;
        }
        if let ComponentItem::ComponentInstance(_) = item.ty {
            let parent = instance.get_export_index(&mut store, None, export);
            index = instance.get_export_index(&mut store, parent.as_ref(), &name);
        }
    }
    let func = index
        .and_then(|i| instance.get_func(&mut store, i))
        .ok_or_else(|| anyhow::anyhow!("the agent exports no function {name:?}"))?;
    let ty = func.ty(&store);
    let param_types: Vec<_> = ty.params().map(|(_, t)| t).collect();
    let params = call
        .to_wasm_params(param_types.iter())
        .map_err(|e| anyhow::anyhow!("arguments of {name}: {e}"))?;
    let mut results = vec![Val::Bool(false); ty.results().len()];
    func.call_async(&mut store, &params, &mut results).await?;
    Ok(results)
}
