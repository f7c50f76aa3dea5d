// Extend a LiteGraph node-type hook without replacing what core or other extensions put there.
export function chainCallback(proto, hook, fn) {
  const original = proto[hook];
  proto[hook] = function () {
    const r = original?.apply(this, arguments);
    fn.apply(this, arguments);
    return r;
  };
}
