// Undo/redo by whole-graph snapshots. litegraph has no undo stack, so every edit is detected by
// comparing the serialised graph (viewport excluded) with the last snapshot: node add, move,
// resize, connect, widget change, delete, paste, group — whatever changed the JSON is one step.

const LIMIT = 100;

export class UndoHistory {
  constructor(capture, restore, onChange = () => {}) {
    this.capture = capture; // () => string
    this.restore = restore; // (string) => void
    this.onChange = onChange;
    this.undoStack = [];
    this.redoStack = [];
    this.current = null;
  }

  /** Start over from the graph as it is now (e.g. after switching tabs). */
  reset(state = this.capture(), undo = [], redo = []) {
    this.current = state;
    this.undoStack = undo;
    this.redoStack = redo;
  }

  /** Record an edit if the graph changed since the last snapshot. */
  checkpoint() {
    const state = this.capture();
    if (state === this.current) return false;
    if (this.current !== null) this.undoStack.push(this.current);
    if (this.undoStack.length > LIMIT) this.undoStack.shift();
    this.redoStack = [];
    this.current = state;
    this.onChange(state);
    return true;
  }

  /** Take the graph as it is now for the current state without an undo step: a change that is no edit. */
  absorb() {
    this.current = this.capture();
    return this.current;
  }

  undo() { return this.#step(this.undoStack, this.redoStack); }
  redo() { return this.#step(this.redoStack, this.undoStack); }

  #step(from, to) {
    this.checkpoint();
    if (!from.length) return false;
    to.push(this.current);
    this.current = from.pop();
    this.restore(this.current);
    this.onChange(this.current);
    return true;
  }
}
