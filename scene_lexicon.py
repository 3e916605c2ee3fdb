"""Everyday-object category lexicon: what objects exist and what the pipeline may assume about them.

A shared, importable table (SPEC section 1: a contract moved out of a stage), pure data plus one builder;
importing it has no side effects. Every category has a key (`scene_schema.slugify` of its name, e.g.
"pen_holder"), a display name with synonyms (plurals are derived), a typical real size, whether the 74 mm
WidowX gripper can hold it once scaled down by at most `MAX_GRASP_SCALE_DOWN`, its receptacle role (IN / IN/ON /
ON / none, which decides the goal relation) and the settings (rooms) it appears in.

Who reads it: `scene_designer.py` (noun-phrase lookup, sizes, graspability, goal relation, the setting and
its distractors, fixes to LLM replies); anything else that needs category knowledge imports it the same way.
The category key is what `scene_graph.json` records and what `generate_assets.py` matches its template
keywords against (`asset_templates.choose_template`).

Adding a category: append a row to the right group of `LEXICON_TABLE`,
    (name, (x, y, z) in cm, graspable 0/1, receptacle "IN" | "IN/ON" | "ON" | None, setting codes, "syn, onyms"),
with setting codes from `SETTINGS`. Synonyms must not name another category; a graspable entry's smaller
horizontal side must be <= 74 mm x MAX_GRASP_SCALE_DOWN. `tests/test_scene_designer.py` checks both, and
`python -c "import asset_templates as t; print(t.choose_template('<key>'))"` shows which mesh template it gets.

    from scene_lexicon import CATEGORIES, LOOKUP
    CATEGORIES["mug"].size_m, LOOKUP[("coffee", "mugs")].key   # (0.12, 0.085, 0.1), 'mug'
"""

from __future__ import annotations

from dataclasses import dataclass

import scene_schema as ss

SETTINGS = {"k": "kitchen", "d": "dining_room", "o": "office", "w": "workshop", "p": "playroom",
            "b": "bathroom", "l": "living_room", "g": "garden"}
# (name, size x y z in cm, graspable by the 74 mm gripper after scaling, receptacle, setting codes, synonyms).
# Receptacle: "IN" open container (always IN), "IN/ON" container with a usable top ("in" -> IN, "on" -> ON),
# "ON" surface, None neither. Groups: food keeps its natural colour (distractors are not recoloured).
LEXICON_TABLE: dict[str, list[tuple]] = {
    "kitchenware": [
        ("mug", (12, 8.5, 10), 1, "IN", "kdo", "coffee mug, tea mug"),
        ("cup", (8, 8, 9), 1, "IN", "kdo", "teacup, tea cup, paper cup, plastic cup, coffee cup"),
        ("glass", (7, 7, 12), 1, "IN", "kd", "drinking glass, tumbler, water glass"),
        ("wine glass", (8, 8, 20), 1, "IN", "d", "wineglass, goblet"),
        ("bowl", (16, 16, 7), 1, "IN", "kd", "salad bowl, cereal bowl, soup bowl, mixing bowl, fruit bowl"),
        ("plate", (26, 26, 2.5), 0, "ON", "kd", "dinner plate, dish, paper plate"),
        ("saucer", (14, 14, 2), 0, "ON", "kd", "side plate"),
        ("tray", (40, 30, 3), 0, "ON", "kdo", "serving tray, baking tray, baking sheet"),
        ("cutting board", (35, 25, 2), 0, "ON", "k", "chopping board, bread board"),
        ("frying pan", (45, 26, 5), 0, "IN", "k", "pan, skillet, frypan, wok"),
        ("pot", (24, 24, 16), 0, "IN", "k", "cooking pot, saucepan, stockpot, casserole"),
        ("kettle", (22, 15, 22), 0, None, "k", "tea kettle"),
        ("teapot", (22, 14, 15), 1, None, "kd", "tea pot"),
        ("spoon", (16, 3.5, 2), 1, None, "kd", "teaspoon, tablespoon, soup spoon, wooden spoon"),
        ("fork", (19, 2.5, 2), 1, None, "kd", "dinner fork"),
        ("knife", (22, 2, 1.5), 1, None, "kd", "butter knife, table knife, kitchen knife, steak knife"),
        ("chopsticks", (24, 2, 1), 1, None, "kd", "chopstick, pair of chopsticks"),
        ("spatula", (30, 7, 3), 1, None, "k", "turner, flipper"),
        ("ladle", (30, 9, 7), 1, None, "k", "soup ladle"),
        ("whisk", (28, 6, 6), 1, None, "k", "egg beater"),
        ("rolling pin", (40, 5, 5), 1, None, "k", "roller"),
        ("tongs", (25, 4, 3), 1, None, "k", "kitchen tongs, pair of tongs"),
        ("peeler", (16, 4, 2), 1, None, "k", "vegetable peeler, potato peeler"),
        ("can opener", (18, 5, 3), 1, None, "k", "tin opener, bottle opener"),
        ("sponge", (10, 7, 3), 1, None, "kb", "dish sponge, scrub sponge, scrubber"),
        ("towel", (40, 30, 1), 0, "ON", "kbd", "cloth, tablecloth, table cloth, dish towel, tea towel, kitchen towel, "
                                              "hand towel, dishcloth, dish cloth, rag, washcloth"),
        ("napkin", (16, 16, 1), 0, "ON", "d", "serviette, paper napkin"),
        ("placemat", (45, 30, 0.5), 0, "ON", "d", "place mat, table mat"),
        ("coaster", (10, 10, 0.6), 0, "ON", "dol", "drink coaster, cup coaster"),
        ("jar", (9, 9, 12), 1, "IN/ON", "k", "mason jar, jam jar, glass jar, cookie jar"),
        ("bottle", (7, 7, 25), 1, None, "kdo", "water bottle, plastic bottle, wine bottle, beer bottle"),
        ("can", (6.6, 6.6, 12), 1, None, "kd", "soda can, tin can, coke can, beer can, tin, drink can, can of soda"),
        ("salt shaker", (4, 4, 9), 1, None, "kd", "salt, salt cellar, pepper shaker, shaker"),
        ("pepper grinder", (5, 5, 18), 1, None, "kd", "pepper mill, salt grinder"),
        ("sauce bottle", (6, 4, 20), 1, None, "kd", "ketchup, ketchup bottle, mustard, mustard bottle, hot sauce, "
                                                   "soy sauce, sauce, oil bottle, olive oil, vinegar"),
        ("cereal box", (20, 7, 28), 1, None, "k", "box of cereal, cereal"),
        ("milk carton", (7, 7, 20), 1, None, "k", "milk, carton, carton of milk, juice carton"),
        ("juice box", (6, 4, 10), 1, None, "kp", "juicebox, juice pack"),
        ("lunch box", (20, 15, 8), 0, "IN/ON", "kp", "lunchbox, bento box"),
        ("thermos", (7, 7, 25), 1, None, "ko", "flask, vacuum flask, travel mug, tumbler flask"),
        ("colander", (25, 25, 12), 0, "IN", "k", "strainer, sieve"),
        ("measuring cup", (12, 9, 9), 1, "IN", "k", "measuring jug"),
        ("oven mitt", (28, 17, 3), 1, None, "k", "oven glove, pot holder"),
        ("paper towel roll", (12, 12, 28), 1, None, "k", "paper towel, paper towels, kitchen roll, "
                                                               "roll of paper towels"),
        ("food container", (18, 12, 7), 1, "IN/ON", "k", "tupperware, plastic container, container, storage container, "
                                                         "takeout box, lunch container"),
        ("pitcher", (15, 12, 22), 1, "IN", "kd", "jug, water jug, carafe"),
        ("sink", (45, 35, 20), 0, "IN", "k", "basin, washbasin, wash basin, kitchen sink, toy sink"),
        ("dish rack", (45, 30, 12), 0, "IN", "k", "drying rack, dish drainer, plate rack"),
        ("stove", (55, 50, 10), 0, "ON", "k", "burner, hob, cooktop, stovetop, stove top, toy stove"),
        ("microwave", (48, 36, 28), 0, "IN/ON", "k", "microwave oven"),
    ],
    "food": [
        ("apple", (8, 8, 8), 1, None, "kd", "green apple, red apple"),
        ("banana", (19, 4, 4), 1, None, "kd", ""),
        ("orange", (8, 8, 8), 1, None, "kd", "mandarin, tangerine, clementine"),
        ("lemon", (8, 6, 6), 1, None, "kd", ""),
        ("lime", (6, 5, 5), 1, None, "kd", ""),
        ("peach", (7.5, 7.5, 7), 1, None, "kd", "nectarine, apricot"),
        ("pear", (7, 7, 10), 1, None, "kd", ""),
        ("plum", (5, 5, 5), 1, None, "kd", ""),
        ("kiwi", (7, 5, 5), 1, None, "kd", "kiwifruit, kiwi fruit"),
        ("mango", (12, 8, 7), 1, None, "kd", ""),
        ("avocado", (10, 7, 7), 1, None, "kd", ""),
        ("tomato", (7, 7, 6), 1, None, "kd", "cherry tomato"),
        ("potato", (10, 6, 5), 1, None, "k", "sweet potato, spud"),
        ("onion", (8, 8, 8), 1, None, "k", "red onion, shallot"),
        ("garlic", (6, 6, 5), 1, None, "k", "garlic bulb, bulb of garlic"),
        ("carrot", (18, 3, 3), 1, None, "k", ""),
        ("cucumber", (20, 4.5, 4.5), 1, None, "k", "zucchini, courgette"),
        ("eggplant", (20, 8, 8), 1, None, "k", "aubergine"),
        ("bell pepper", (9, 9, 10), 1, None, "k", "pepper, capsicum, chili, chili pepper"),
        ("corn", (20, 5, 5), 1, None, "k", "corn cob, corncob, ear of corn, maize"),
        ("broccoli", (15, 12, 12), 1, None, "k", "cauliflower"),
        ("mushroom", (6, 6, 6), 1, None, "k", ""),
        ("lettuce", (20, 20, 15), 0, None, "k", "cabbage, head of lettuce"),
        ("watermelon", (30, 22, 22), 0, None, "k", "melon, pumpkin"),
        ("pineapple", (12, 12, 28), 1, None, "k", ""),
        ("grapes", (15, 10, 6), 1, None, "kd", "grape, bunch of grapes"),
        ("strawberry", (3, 3, 4), 1, None, "kd", "raspberry"),
        ("cherry", (2.5, 2.5, 2.5), 1, None, "kd", ""),
        ("egg", (4.5, 4.5, 6), 1, None, "k", "boiled egg"),
        ("bread", (25, 12, 10), 1, None, "kd", "loaf, loaf of bread, bread loaf, bun, roll of bread"),
        ("baguette", (60, 6, 6), 1, None, "kd", "french bread"),
        ("croissant", (12, 6, 4), 1, None, "kd", ""),
        ("donut", (9, 9, 3), 1, None, "kd", "doughnut, bagel"),
        ("cookie", (7, 7, 1), 1, None, "kdp", "biscuit, cracker"),
        ("muffin", (7, 7, 6), 1, None, "kd", "cupcake"),
        ("sandwich", (12, 12, 5), 1, None, "kdo", "burger, hamburger"),
        ("cheese", (10, 6, 4), 1, None, "k", "block of cheese, piece of cheese, cheese wedge"),
        ("chocolate bar", (15, 7, 1), 1, None, "kop", "chocolate, candy bar, bar of chocolate, candy"),
        ("chips bag", (18, 6, 25), 1, None, "kp", "bag of chips, chip bag, crisps, chips, potato chips, "
                                                   "bag of crisps, packet of crisps"),
        ("coconut", (12, 12, 12), 1, None, "k", ""),
        ("sushi", (5, 3, 3), 1, None, "d", "sushi roll, onigiri, rice ball"),
        ("pizza slice", (20, 12, 2), 1, None, "kd", "slice of pizza, pizza"),
        ("banana peel", (15, 8, 3), 1, None, "k", "peel, orange peel, fruit peel, apple core, food scraps"),
    ],
    "office": [
        ("pen", (14, 1, 1), 1, None, "ol", "ballpoint, ballpoint pen, biro, gel pen"),
        ("pencil", (18, 0.8, 0.8), 1, None, "op", "colored pencil, coloured pencil"),
        ("marker", (13, 1.8, 1.8), 1, None, "op", "sharpie, felt pen, felt tip pen, highlighter, marker pen"),
        ("crayon", (9, 1, 1), 1, None, "p", "wax crayon"),
        ("eraser", (5, 2, 1.2), 1, None, "op", "pencil eraser"),
        ("pen holder", (8, 8, 10), 1, "IN", "o", "pencil cup, pencil holder, pen cup, pen pot, pencil pot, pen jar"),
        ("stapler", (15, 4, 6), 1, None, "o", ""),
        ("tape dispenser", (15, 6, 8), 1, None, "o", ""),
        ("tape", (11, 11, 5), 1, None, "ow", "roll of tape, masking tape, duct tape, scotch tape, "
                                                 "tape roll, sellotape"),
        ("scissors", (20, 8, 1.5), 1, None, "okp", "pair of scissors, scissor, shears"),
        ("ruler", (30, 3, 0.5), 1, None, "o", "straightedge"),
        ("notebook", (21, 15, 1.5), 0, "ON", "o", "notepad, note pad, journal, exercise book, writing pad"),
        ("book", (24, 17, 3), 0, "ON", "ol", "paperback, hardcover, textbook, novel, storybook"),
        ("sticky notes", (7.6, 7.6, 2), 1, None, "o", "post it, post it notes, sticky note, sticky note pad"),
        ("paper clip", (3.3, 1, 0.5), 1, None, "o", "paperclip"),
        ("binder clip", (3, 3, 2.5), 1, None, "o", "bulldog clip, clip"),
        ("calculator", (16, 8, 1.5), 1, None, "o", "pocket calculator"),
        ("computer mouse", (11, 6, 4), 1, None, "o", "mouse, wireless mouse, mice, computer mice"),
        ("keyboard", (44, 13, 3), 0, "ON", "o", "computer keyboard"),
        ("laptop", (33, 23, 2), 0, "ON", "o", "notebook computer, macbook"),
        ("phone", (15, 7.5, 0.8), 1, None, "ol", "cellphone, cell phone, smartphone, smart phone, mobile phone, "
                                                 "mobile, iphone"),
        ("headphones", (18, 16, 8), 0, None, "ol", "headset, earphones"),
        ("desk organizer", (20, 10, 10), 0, "IN", "o", "desk tidy, organizer, organiser, desk caddy"),
        ("letter tray", (32, 25, 6), 0, "IN", "o", "in tray, inbox tray, document tray, paper tray, file tray"),
        ("envelope", (22, 11, 0.5), 0, "ON", "o", "letter"),
        ("glue stick", (10, 2.5, 2.5), 1, None, "op", "glue, glue bottle"),
        ("usb stick", (5, 2, 1), 1, None, "o", "usb drive, flash drive, thumb drive, memory stick, usb"),
        ("remote control", (17, 5, 2), 1, None, "lo", "remote, tv remote, controller"),
        ("wallet", (11, 9, 2), 1, None, "lo", "purse"),
        ("keys", (8, 4, 1), 1, None, "lo", "key, keychain, key ring, set of keys, car key"),
        ("eyeglasses", (14, 5, 4), 1, None, "lo", "spectacles, sunglasses, reading glasses"),
        ("trash can", (25, 25, 30), 0, "IN", "okw", "trash bin, garbage can, garbage bin, wastebasket, waste basket, "
                                                    "waste bin, dustbin, recycling bin, rubbish bin, trash"),
        ("bin", (35, 25, 20), 0, "IN", "wlp", "storage bin, plastic bin, tote, tub, storage tub"),
        ("pencil case", (20, 7, 5), 1, "IN/ON", "op", "pencil pouch, pencil box"),
        ("sharpener", (4, 2.5, 2.5), 1, None, "op", "pencil sharpener"),
        ("battery", (5, 1.4, 1.4), 1, None, "ow", "aa battery, batteries"),
        ("charger", (6, 5, 3), 1, None, "o", "phone charger, power adapter, adapter, power bank"),
        ("clipboard", (32, 23, 2), 0, "ON", "o", ""),
        ("drawer", (40, 35, 10), 0, "IN", "o", "desk drawer, drawer organizer"),
        ("shelf", (50, 25, 25), 0, "ON", "lo", "bookshelf, shelf unit"),
        ("mouse pad", (25, 20, 0.5), 0, "ON", "o", "mousepad, mouse mat"),
        ("stamp", (6, 4, 7), 1, None, "o", "rubber stamp"),
    ],
    "tools": [
        ("hammer", (30, 12, 3), 1, None, "w", "mallet, claw hammer"),
        ("screwdriver", (20, 3, 3), 1, None, "w", "phillips screwdriver"),
        ("wrench", (20, 5, 1.5), 1, None, "w", "spanner, adjustable wrench"),
        ("pliers", (18, 6, 2), 1, None, "w", "plier, pair of pliers"),
        ("tape measure", (7, 7, 4), 1, None, "w", "measuring tape"),
        ("drill", (25, 8, 22), 1, None, "w", "power drill, cordless drill"),
        ("screw", (4, 0.8, 0.8), 1, None, "w", "wood screw"),
        ("nut", (1.5, 1.5, 0.8), 1, None, "w", "hex nut, washer"),
        ("bolt", (6, 1.2, 1.2), 1, None, "w", ""),
        ("nail", (6, 0.5, 0.5), 1, None, "w", ""),
        ("toolbox", (45, 22, 20), 0, "IN/ON", "w", "tool box, tool chest, tool kit"),
        ("bucket", (28, 28, 28), 0, "IN", "wg", "pail"),
        ("paintbrush", (20, 3, 2), 1, None, "w", "paint brush, brush"),
        ("paint can", (17, 17, 19), 0, None, "w", "tin of paint, can of paint"),
        ("utility knife", (15, 3, 2), 1, None, "w", "box cutter, stanley knife"),
        ("spirit level", (40, 4, 6), 1, None, "w", "level"),
        ("glove", (25, 12, 3), 1, None, "wg", "work glove, rubber glove, gardening glove"),
        ("flashlight", (20, 4, 4), 1, None, "wl", "torch"),
        ("clamp", (15, 8, 3), 1, None, "w", "c clamp"),
        ("brick", (20, 10, 6), 1, "ON", "wg", ""),
        ("plank", (40, 10, 2), 0, "ON", "w", "board, wooden board"),
        ("parts bin", (20, 12, 8), 0, "IN", "w", "parts tray, small parts bin"),
        ("crate", (40, 30, 25), 0, "IN", "wg", "wooden crate, milk crate"),
        ("spray bottle", (10, 6, 25), 1, None, "wbg", "spray, squirt bottle"),
        ("sandpaper", (23, 9, 0.5), 0, "ON", "w", "sanding block"),
        ("caliper", (23, 8, 1.5), 1, None, "w", "calipers, vernier caliper"),
    ],
    "toys": [
        ("block", (5, 5, 5), 1, "ON", "p", "cube, toy block, building block, wooden block, wood block"),
        ("lego brick", (3.2, 1.6, 1.1), 1, None, "p", "lego, lego block, lego piece, duplo"),
        ("ball", (7, 7, 7), 1, None, "p", "toy ball, rubber ball, bouncy ball, ping pong ball"),
        ("tennis ball", (6.7, 6.7, 6.7), 1, None, "pg", ""),
        ("basketball", (24, 24, 24), 0, None, "p", "soccer ball, football, volleyball"),
        ("toy car", (10, 5, 4), 1, None, "p", "car, race car, toy truck, truck, model car"),
        ("teddy bear", (20, 15, 25), 1, None, "pl", "teddy, stuffed animal, plush, plush toy, stuffed toy, "
                                                         "bear, plushie"),
        ("doll", (25, 8, 6), 1, None, "p", "barbie"),
        ("action figure", (15, 5, 3), 1, None, "p", "figurine, toy figure, toy soldier"),
        ("rubber duck", (9, 7, 8), 1, None, "pb", "duck, rubber ducky, toy duck"),
        ("toy dinosaur", (15, 6, 8), 1, None, "p", "dinosaur, dino, toy dino, t rex"),
        ("dice", (1.6, 1.6, 1.6), 1, None, "p", "die"),
        ("puzzle piece", (5, 5, 0.5), 1, None, "p", "jigsaw piece"),
        ("stacking ring", (8, 8, 2), 1, None, "p", "toy ring, ring"),
        ("toy box", (40, 30, 25), 0, "IN/ON", "p", "toy chest"),
        ("spinning top", (5, 5, 5), 1, None, "p", ""),
        ("yo yo", (6, 6, 3), 1, None, "p", "yoyo"),
        ("marble", (1.6, 1.6, 1.6), 1, None, "p", ""),
        ("toy airplane", (15, 15, 5), 1, None, "p", "toy plane, airplane, aeroplane, plane"),
        ("rubiks cube", (5.7, 5.7, 5.7), 1, None, "p", "rubik cube, puzzle cube, magic cube"),
        ("toy train", (12, 5, 6), 1, None, "p", "train, train engine, locomotive"),
        ("crayon box", (12, 9, 2), 1, "IN/ON", "p", "box of crayons"),
        ("toy bucket", (12, 12, 12), 1, "IN", "pg", "sand bucket, sand pail"),
        ("paper ball", (6, 6, 6), 1, None, "o", "crumpled paper, paper wad, ball of paper"),
    ],
    "home": [
        ("toothbrush", (19, 2, 2), 1, None, "b", "tooth brush"),
        ("toothpaste", (19, 4, 3), 1, None, "b", "toothpaste tube, tube of toothpaste"),
        ("soap", (9, 6, 3), 1, None, "bk", "bar of soap, soap bar"),
        ("soap dish", (13, 9, 2.5), 1, "ON", "b", "soap tray"),
        ("shampoo bottle", (7, 4, 20), 1, None, "b", "shampoo, conditioner, lotion, lotion bottle, body wash"),
        ("comb", (18, 4, 0.8), 1, None, "b", ""),
        ("hairbrush", (22, 7, 5), 1, None, "b", "hair brush"),
        ("razor", (14, 4, 2), 1, None, "b", "shaver"),
        ("toilet paper", (11, 11, 10), 1, None, "b", "toilet roll, toilet paper roll, loo roll, roll of toilet paper"),
        ("tissue box", (24, 12, 9), 1, None, "bol", "box of tissues, tissues, kleenex"),
        ("perfume bottle", (6, 4, 10), 1, None, "b", "perfume, cologne"),
        ("nail polish", (3, 3, 7), 1, None, "b", "nail polish bottle, nail varnish"),
        ("toothbrush cup", (8, 8, 11), 1, "IN", "b", "toothbrush holder"),
        ("basket", (30, 22, 15), 0, "IN", "kblg", "wicker basket, fruit basket, laundry basket, hamper, "
                                                          "shopping basket"),
        ("vase", (12, 12, 25), 1, "IN", "ld", "flower vase"),
        ("candle", (7, 7, 10), 1, None, "ld", "tealight, tea light"),
        ("picture frame", (20, 15, 2), 0, "ON", "lo", "photo frame, frame"),
        ("box", (25, 20, 15), 0, "IN/ON", "low", "cardboard box, storage box, shoebox, shoe box, gift box, present, "
                                                 "package, parcel"),
        ("jewelry box", (12, 8, 6), 1, "IN/ON", "lb", "jewellery box, trinket box"),
        ("watch", (4, 4, 1), 1, None, "lb", "wristwatch, wrist watch"),
        ("magazine", (28, 21, 0.5), 0, "ON", "l", "comic, comic book"),
        ("shoe", (28, 10, 11), 1, None, "l", "sneaker, boot, slipper"),
        ("sock", (25, 9, 1), 1, None, "lb", "pair of socks"),
        ("plant pot", (12, 12, 12), 1, "IN", "log", "flower pot, flowerpot, planter"),
        ("potted plant", (15, 15, 30), 0, None, "lo", "houseplant, house plant, plant"),
        ("cactus", (8, 8, 12), 1, None, "lo", "succulent"),
        ("mat", (40, 30, 1), 0, "ON", "lb", "doormat, bath mat, rug"),
        ("lighter", (8, 2.5, 1.2), 1, None, "l", "matchbox, box of matches, matches"),
        ("cushion", (40, 40, 12), 0, "ON", "l", "pillow"),
        ("ashtray", (12, 12, 3), 1, "IN", "l", "ash tray"),
    ],
    "garden": [
        ("watering can", (35, 15, 25), 0, None, "g", ""),
        ("trowel", (30, 8, 5), 1, None, "g", "garden trowel, hand shovel, small shovel, shovel"),
        ("pine cone", (8, 6, 6), 1, None, "g", "pinecone, acorn"),
        ("rock", (8, 6, 5), 1, "ON", "g", "stone, pebble"),
        ("seed packet", (9, 13, 1), 0, None, "g", "packet of seeds, seeds"),
        ("flower", (8, 8, 30), 1, None, "gl", "rose, tulip, daisy, sunflower"),
        ("garden gnome", (15, 12, 30), 1, None, "g", "gnome"),
        ("plant tray", (35, 25, 6), 0, "IN", "g", "seed tray, seedling tray"),
    ],
}
# The work surface everything stands on (role "context"); naming it as a destination is an error.
CONTEXT_NAMES = ("table, desk, counter, countertop, kitchen counter, workbench, work bench, tabletop, table top, "
                 "bench, floor, ground, surface, work surface, kitchen table, dining table")
GENERIC_CATEGORY = "generic_object"  # an unknown noun: a primitive of this size (by role) from the asset stage
GENERIC_SIZE_M = {"target": (0.06, 0.06, 0.06), "destination": (0.2, 0.2, 0.08)}
MAX_GRASP_SCALE_DOWN = 2.5  # graspable entries fit 74 mm after scaling down by at most this factor


@dataclass(frozen=True)
class Category:
    key: str
    """Canonical category ("pen_holder"): what scene graphs record and asset templates are matched against."""
    names: tuple[str, ...]
    """Display name first, then synonyms (plurals are derived)."""
    size_m: tuple[float, float, float]
    """Typical real extents (x, y, z) in metres, z up."""
    graspable: bool
    """The 74 mm gripper can hold it once scaled down by at most MAX_GRASP_SCALE_DOWN."""
    receptacle: str | None
    """"IN", "IN/ON", "ON" or None (see LEXICON_TABLE)."""
    settings: tuple[str, ...]
    """Rooms it appears in (values of SETTINGS); the designer draws distractors from the scene's setting."""
    group: str
    """LEXICON_TABLE group ("food", "office", ...; "context" for the table)."""


def _plurals(name: str) -> list[str]:
    """Plural spellings of a (multi-word) name: the last word is inflected."""
    *head, w = name.split()
    forms = {w + "s"}
    if w.endswith(("s", "x", "z", "ch", "sh", "o")):
        forms.add(w + "es")
    if w.endswith("y") and len(w) > 1 and w[-2] not in "aeiou":
        forms.add(w[:-1] + "ies")
    if w.endswith("fe"):
        forms.add(w[:-2] + "ves")
    elif w.endswith("f") and not w.endswith("ff"):
        forms.add(w[:-1] + "ves")
    return [" ".join([*head, f]) for f in sorted(forms)]


def build_lexicon() -> tuple[dict[str, Category], dict[tuple[str, ...], Category]]:
    """Categories by key and a lookup from token tuples (names, synonyms, plurals) to categories."""
    cats: dict[str, Category] = {}
    for group, rows in LEXICON_TABLE.items():
        for name, size_cm, grasp, recep, codes, syn in rows:
            names = (name, *[s.strip() for s in syn.split(",") if s.strip()])
            cats[ss.slugify(name)] = Category(ss.slugify(name), names, tuple(round(s / 100, 4) for s in size_cm),
                                              bool(grasp), recep, tuple(SETTINGS[c] for c in codes), group)
    cats["table"] = Category("table", tuple(s.strip() for s in CONTEXT_NAMES.split(",")), (1.2, 0.8, 0.75),
                             False, "ON", (), "context")
    lookup: dict[tuple[str, ...], Category] = {}
    for c in cats.values():  # explicit names win over derived plurals
        for n in c.names:
            lookup.setdefault(tuple(n.split()), c)
    for c in cats.values():
        for n in c.names:
            for p in _plurals(n):
                lookup.setdefault(tuple(p.split()), c)
    return cats, lookup


CATEGORIES, LOOKUP = build_lexicon()
MAX_NGRAM = max(len(k) for k in LOOKUP)
