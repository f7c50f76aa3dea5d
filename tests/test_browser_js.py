"""The pack's js extension in the real frontend: variable-length inputs, validation hints, the text panel.

Generic behaviour is exercised on nodes that declare it: the TMA and schedule-preview nodes of the pack, and a
test-only node (tests/fixture_nodes) that declares a dynamic image group and widgets with size/frame rules the
way the pack's video nodes do.
"""
import pytest

pytestmark = pytest.mark.server

ADD_NODE = """([type, x, y]) => {
    const node = window.LiteGraph.createNode(type);
    node.pos = [x, y];
    window.app.graph.add(node);
    return node.id; }"""


def inputs_of(page, node_id):
    return page.page.evaluate("""(id) => window.app.graph.getNodeById(id).inputs
        .filter(i => !i.widget).map(i => [i.name, i.link != null])""", node_id)


def connect(page, source_id, target_id, input_name):
    page.page.evaluate("""([s, t, name]) => {
        const src = window.app.graph.getNodeById(s), dst = window.app.graph.getNodeById(t);
        const slot = dst.inputs.findIndex(i => i.name === name);
        src.connect(0, dst, slot); }""", [source_id, target_id, input_name])
    page.page.wait_for_timeout(100)


def disconnect(page, node_id, input_name):
    page.page.evaluate("""([id, name]) => {
        const node = window.app.graph.getNodeById(id);
        node.disconnectInput(node.inputs.findIndex(i => i.name === name)); }""", [node_id, input_name])
    page.page.wait_for_timeout(100)


def hints(page, node_id):
    return page.page.evaluate("(id) => window.app.graph.getNodeById(id).unicascadeHints ?? []", node_id)


@pytest.fixture
def page(comfy_page):
    """An empty graph whose next node ids are new: nodes are removed one by one rather than the graph cleared,
    since graph.clear() restarts ids at 1 and newer frontends (1.4x) keep widget values per node id in a store
    that outlives the cleared node — a new node would show the old node's values."""
    comfy_page.page.evaluate("""() => { const g = window.app.graph;
        for (const n of [...(g.nodes ?? g._nodes)]) g.remove(n); }""")
    return comfy_page


def test_extension_loaded_without_errors(page):
    assert page.page.evaluate("() => window.app.extensions.some(e => e.name === 'UniCascade.core')")
    assert page.pack_errors() == []


def test_dynamic_inputs_grow_shrink_and_reach_the_backend(comfy, page):
    node = page.page.evaluate(ADD_NODE, ["UniCascadeTestDynamicInputs", 500, 100])
    sources = [page.page.evaluate(ADD_NODE, ["EmptyImage", 50, 80 + 200 * i]) for i in range(3)]
    for i, source in enumerate(sources):
        page.set_widget(source, "height", 16 + 16 * i)  # tell the images apart by height
        page.set_widget(source, "width", 32)
    assert inputs_of(page, node) == [["image_1", False]]
    connect(page, sources[0], node, "image_1")
    assert inputs_of(page, node) == [["image_1", True], ["image_2", False]]
    connect(page, sources[1], node, "image_2")
    connect(page, sources[2], node, "image_3")
    assert inputs_of(page, node) == [["image_1", True], ["image_2", True], ["image_3", True], ["image_4", False]]
    disconnect(page, node, "image_1")
    assert inputs_of(page, node) == [["image_1", True], ["image_2", True], ["image_3", False]]
    page.screenshot("js_dynamic_inputs")
    # the backend receives image_1, image_2 = the second and third sources, in order; the panel shows it
    prompt = page.api_prompt()
    assert sorted(k for k in prompt[str(node)]["inputs"] if k.startswith("image_")) == ["image_1", "image_2"]
    entry = page.run_and_wait()
    assert entry["status"]["status_str"] == "success", entry["status"]
    page.page.wait_for_function(f"() => window.app.graph.getNodeById({node}).unicascadeText")
    panel = page.page.locator(f'textarea[data-unicascade-node="{node}"]').input_value()
    assert panel == "received: image_1 (1, 32, 32, 3), image_2 (1, 48, 32, 3)"
    assert page.pack_errors() == []


def widget_value(page, node_id, name):
    return page.page.evaluate("([id, name]) => window.app.graph.getNodeById(id).widgets.find(w => w.name === name)"
                              ".value", [node_id, name])


def test_validation_hints_before_queueing(page):
    node = page.page.evaluate(ADD_NODE, ["UniCascadeMfMCondition", 100, 100])
    assert hints(page, node) == []  # defaults 640×352, 97 frames are valid
    page.set_widget(node, "frames", 96)
    assert hints(page, node) == ["frames 96 is not 4n+1 (nearest: 97)"]
    page.set_widget(node, "width", 650)  # the widget's step of 16 snaps a typed width before any hint is needed
    assert widget_value(page, node, "width") % 16 == 0
    page.screenshot("js_validation_hints")
    page.set_widget(node, "frames", 81)
    assert hints(page, node) == []
    # the size rule on a widget without a step (declared the same way by the test node)
    other = page.page.evaluate(ADD_NODE, ["UniCascadeTestDynamicInputs", 600, 100])
    page.set_widget(other, "width", 100)
    page.set_widget(other, "length", 30)
    assert hints(page, other) == ["width 100 is not a multiple of 16 (nearest: 96)",
                                  "length 30 is not 4n+1 (nearest: 29)"]

    tma = page.page.evaluate(ADD_NODE, ["UniCascadeTemperatureModalityAlignment", 500, 100])
    assert hints(page, tma) == []
    page.set_widget(tma, "txt_window_end", 0.7)
    assert hints(page, tma) == ["text window (until u=0.7) overlaps the image window (from u=0.6)"]
    page.set_widget(tma, "lambda_txt", 0.0)
    page.set_widget(tma, "lambda_img", 0.0)
    assert hints(page, tma) == ["TMA is inactive: the output equals the unpatched model"]
    assert page.pack_errors() == []


def test_text_panel_shows_the_schedule_preview(comfy, page):
    ids = {}
    for name, x in (("UNETLoader", 50), ("BasicScheduler", 400), ("UniCascadeTMASchedulePreview", 750)):
        ids[name] = page.page.evaluate(ADD_NODE, [name, x, 100])
    page.set_widget(ids["UNETLoader"], "unet_name", "wan2.1_t2v_1.3B_fp16.safetensors")
    page.page.evaluate("""([u, s, p]) => {
        const g = window.app.graph;
        const unet = g.getNodeById(u), sched = g.getNodeById(s), prev = g.getNodeById(p);
        unet.connect(0, sched, sched.inputs.findIndex(i => i.name === 'model'));
        sched.connect(0, prev, prev.inputs.findIndex(i => i.name === 'sigmas'));
        unet.connect(0, prev, prev.inputs.findIndex(i => i.name === 'model')); }""",
                       [ids["UNETLoader"], ids["BasicScheduler"], ids["UniCascadeTMASchedulePreview"]])
    page.set_widget(ids["BasicScheduler"], "steps", 5)
    entry = page.run_and_wait()
    assert entry["status"]["status_str"] == "success", entry["status"]
    preview = ids["UniCascadeTMASchedulePreview"]
    page.page.wait_for_function(f"() => window.app.graph.getNodeById({preview}).unicascadeText")
    text = page.page.locator(f'textarea[data-unicascade-node="{preview}"]').input_value()
    lines = text.splitlines()
    assert lines[0].split() == ["step", "sigma", "u", "alpha_txt", "alpha_img"]
    assert len(lines) == 6 and lines[1].split()[3] == "1.3000"
    page.screenshot("js_text_panel")
    # the panel is not saved into the workflow's widget values
    values = page.page.evaluate(f"() => window.app.graph.getNodeById({preview}).serialize().widgets_values")
    assert len(values) == 5
    assert page.pack_errors() == []


def test_reference_inputs_of_the_unimmvsr_node_grow_and_shrink(page):
    node = page.page.evaluate(ADD_NODE, ["UniCascadeUniMMVSRReferences", 500, 100])
    groups = lambda: [n for n, _ in inputs_of(page, node) if n.startswith(("id_image", "reference_video"))]
    assert groups() == ["id_image_1", "reference_video_1"]
    sources = [page.page.evaluate(ADD_NODE, ["EmptyImage", 50, 80 + 200 * i]) for i in range(3)]
    connect(page, sources[0], node, "id_image_1")
    connect(page, sources[1], node, "id_image_2")
    connect(page, sources[2], node, "reference_video_1")
    assert sorted(groups()) == ["id_image_1", "id_image_2", "id_image_3", "reference_video_1", "reference_video_2"]
    disconnect(page, node, "id_image_1")
    assert sorted(groups()) == ["id_image_1", "id_image_2", "reference_video_1", "reference_video_2"]
    linked = page.page.evaluate(f"() => window.app.graph.getNodeById({node}).inputs"
                                ".filter(i => i.link != null).map(i => i.name).sort()")
    assert linked == ["id_image_1", "reference_video_1"]
    assert page.pack_errors() == []
