// Before the canvas opens a file, the server reads it as the CLI and POST /prompt do (server/migrations.py,
// server/provenance.py): nodes saved with older versions are migrated (the toast says what changed), nodes
// newer than this server's refuse the file, and for an image, model files that differ here from the ones it
// was made with are named, and the user is asked whether to open it anyway.
import { confirmDialog } from "./dialog.js";

/** The workflow (UI or API JSON) to open, or null when the user chose not to; throws what the server refused. */
export async function checkedWorkflow(api, toast, workflow, record = null) {
  const res = await api.request("/workflow/open", { method: "POST", body: { workflow, latentgraph: record } });
  if (res.migrated.length) toast(`Updated to this version's nodes:\n${res.migrated.join("\n")}`, "warn", 12000);
  if (res.mismatches.length) {
    const question = "This image was made with model files that differ here:\n\n"
      + `${res.mismatches.join("\n")}\n\nOpen it anyway? Its image will not be reproduced exactly.`;
    if (!await confirmDialog(question, "Open anyway")) return null;
  }
  return res.workflow;
}
