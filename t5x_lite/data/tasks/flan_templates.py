"""Instruction template sets for the FLAN tasks (`flan_tasks.py`), written for this project.

FLAN phrases every dataset about ten ways, so that a model learns the task rather than one
wording; these sets do the same in our own words. A set is written over the field names a
preprocessor returns, so tasks of one kind share it (every NLI dataset returns `premise` and
`hypothesis`). Classification inputs end with the options, as FLAN places them. The last one or
two templates of most sets are *inverse*: they ask for an input given the answer (a question
for an answer, a text for a summary, the other translation direction); evaluation skips them.
"""
from __future__ import annotations

from t5x_lite.data.tasks.templates import Template

_OPTIONS = "\n\n{options_}"


def _choose(*inputs: str | Template) -> tuple[Template, ...]:
    """Classification templates: each input shows the options last, the target is the answer;
    `Template`s (the inverse ones) pass through."""
    return tuple(t if isinstance(t, Template) else Template(inputs=t + _OPTIONS) for t in inputs)


def _write(*inputs: str | Template) -> tuple[Template, ...]:
    """Generation templates whose target is the answer; `Template`s pass through."""
    return tuple(t if isinstance(t, Template) else Template(inputs=t) for t in inputs)


def _inverse(inputs: str, targets: str) -> Template:
    return Template(inputs=inputs, targets=targets, inverse=True)


# ------------------------------------------------------------------------------ NLI and pairs
NLI = _choose(  # premise, hypothesis
    "Premise: {premise}\nHypothesis: {hypothesis}\n\nDoes the premise entail the hypothesis?",
    "{premise}\n\nBased on the passage above, can we conclude that \"{hypothesis}\"?",
    "Is the statement true, given the text?\n\nText: {premise}\n\nStatement: {hypothesis}",
    "{premise}\n\nQuestion: is \"{hypothesis}\" supported by the text above?",
    "Given that \"{premise}\", does it follow that \"{hypothesis}\"?",
    "1. {premise}\n2. {hypothesis}\n\nIf the first sentence is true, must the second be?",
    "{premise}\n\nIs the following claim implied by what you just read? {hypothesis}",
    "Context:\n{premise}\n\nClaim:\n{hypothesis}\n\nDoes the context back up the claim?",
    _inverse("Premise: {premise}\n\nWrite a hypothesis such that the answer to \"Does the "
             "premise entail the hypothesis?\" is \"{answer}\".", "{hypothesis}"),
    _inverse("Write a premise and a hypothesis for which the answer to \"Does the premise "
             "entail the hypothesis?\" is \"{answer}\".",
             "Premise: {premise}\nHypothesis: {hypothesis}"),
)

QNLI = _choose(  # question, sentence
    "Does the sentence \"{sentence}\" answer the question \"{question}\"?",
    "Question: {question}\nSentence: {sentence}\n\nDoes the sentence contain the answer?",
    "{sentence}\n\nCan the question \"{question}\" be answered with the sentence above?",
    "Is the answer to \"{question}\" found in the following sentence?\n\n{sentence}",
    "Here is a question: {question}\n\nDoes this sentence respond to it? {sentence}",
    "Does the candidate answer the question?\nQuestion: {question}\nCandidate: {sentence}",
    "Someone asked \"{question}\" and was told \"{sentence}\" Was the question answered?",
    "{question}\n\nWould \"{sentence}\" be a good reply to this question?",
    "Sentence: {sentence}\n\nDoes it tell us the answer to this: {question}",
    _inverse("Sentence: {sentence}\n\nWrite a question such that the answer to \"Does the "
             "sentence answer it?\" is \"{answer}\".", "{question}"),
)

PARAPHRASE = _choose(  # sentence1, sentence2
    "Sentence 1: {sentence1}\nSentence 2: {sentence2}\n\nDo these sentences mean the same?",
    "{sentence1}\n{sentence2}\n\nAre the two texts above paraphrases of each other?",
    "Do these texts say the same thing in different words?\n\n{sentence1}\n\n{sentence2}",
    "First: {sentence1}\nSecond: {sentence2}\n\nIs the second a rewording of the first?",
    "Is \"{sentence1}\" equivalent in meaning to \"{sentence2}\"?",
    "A: {sentence1}\nB: {sentence2}\n\nDo A and B have the same meaning?",
    "{sentence1}\n\nDoes the next text convey the same information?\n\n{sentence2}",
    "Check whether the two texts are semantically equivalent.\n{sentence1}\n{sentence2}",
    "Could \"{sentence2}\" replace \"{sentence1}\" without changing the meaning?",
    _inverse("Write a sentence such that the answer to \"Does it mean the same as '{sentence1}'"
             "?\" is \"{answer}\".", "{sentence2}"),
)

SIMILARITY = _choose(  # sentence1, sentence2; options 0..5
    "Sentence A: {sentence1}\nSentence B: {sentence2}\n\nHow similar are they in meaning (0-5)?",
    "Rate their similarity from 0 (unrelated) to 5 (same meaning).\n{sentence1}\n{sentence2}",
    "{sentence1}\n\n{sentence2}\n\nHow close in meaning are these? Answer from 0 to 5.",
    "How much does \"{sentence1}\" mean the same as \"{sentence2}\"? (0 = not at all, 5 = fully)",
    "Give a similarity score between 0 and 5 for this pair.\n{sentence1}\n{sentence2}",
    "Compare \"{sentence1}\" with \"{sentence2}\". How similar are they, from 0 to 5?",
    "First sentence: {sentence1}\nSecond sentence: {sentence2}\nScore their similarity (0-5).",
    "On a 0 to 5 scale, how much do these overlap in meaning?\n{sentence1}\n{sentence2}",
    _inverse("Write a sentence whose similarity to \"{sentence1}\" is {answer} on a scale from "
             "0 (unrelated) to 5 (same meaning).", "{sentence2}"),
    _inverse("Sentence: {sentence2}\n\nWrite another sentence that scores {answer} out of 5 "
             "for similarity with it.", "{sentence1}"),
)

# --------------------------------------------------------------------------------- sentiment
SENTIMENT = _choose(  # text
    "{text}\n\nIs the sentiment of this text positive or negative?",
    "What is the sentiment expressed in the following text?\n\n{text}",
    "Text: {text}\n\nDid the writer feel positively or negatively?",
    "Classify the tone of this piece of writing.\n\n{text}",
    "{text}\n\nHow would you describe the attitude of the text above?",
    "Determine the sentiment: {text}",
    "{text}\n\nWas this written in a positive or a negative mood?",
    "Here is a piece of text: {text}\n\nWhich sentiment does it carry?",
    _inverse("Write a text with a {answer} sentiment.", "{text}"),
    _inverse("Compose something short that expresses a {answer} opinion.", "{text}"),
)

# ------------------------------------------------------------------------------ question answering
CLOSED_BOOK_QA = _write(  # question
    "Answer the following question.\n\n{question}",
    "Question: {question}\nAnswer:",
    "Please answer this trivia question: {question}",
    "What is the answer to this question? {question}",
    "Here is a general knowledge question. {question}",
    "{question}\n\nWhat is the answer?",
    "Answer briefly: {question}",
    "Try to answer this: {question}",
    "Q: {question}\n\nGive a short answer.",
    _inverse("Write a question whose answer is \"{answer}\".", "{question}"),
)

MULTIPLE_CHOICE = _choose(  # question
    "Pick the correct answer to this question.\n\n{question}",
    "Question: {question}\n\nWhich of the choices below is right?",
    "Answer the following multiple-choice question.\n{question}",
    "{question}\n\nSelect the best answer.",
    "Here is a science question: {question}",
    "Which answer is correct? {question}",
    "Test question: {question}\nWhat is the answer?",
    "Choose the right option to answer: {question}",
    "{question}",
    _inverse("Write a question whose correct answer is \"{answer}\".", "{question}"),
)

CONTEXT_CHOICE = _choose(  # context, question
    "{context}\n\nBased on the text above, answer: {question}",
    "Read this and answer the question.\n\n{context}\n\n{question}",
    "Context: {context}\nQuestion: {question}\n\nWhich option is correct?",
    "Use this information to answer.\n\nInformation: {context}\nQuestion: {question}",
    "{question}\n\nHint: {context}",
    "Here is some background: {context}\n\nNow answer: {question}",
    "{context}\n\nWhat is the best answer to the question \"{question}\"?",
    "Question: {question}\n\nRelevant text: {context}\n\nPick the answer.",
    "Answer the question using the passage.\nPassage: {context}\nQuestion: {question}",
    _inverse("{context}\n\nWrite a question about the text above whose answer is "
             "\"{answer}\".", "{question}"),
)

EXTRACTIVE_QA = _write(  # context, question
    "{context}\n\nAnswer the question using the passage above: {question}",
    "Read the text and answer the question.\n\n{context}\n\nQuestion: {question}",
    "Passage: {context}\n\nQuestion: {question}\nAnswer:",
    "{context}\n\nQ: {question}",
    "Answer a question about this passage.\n\n{context}\n\n{question}",
    "Here is an article:\n{context}\n\nWhat is the answer to this question: {question}",
    "Question: {question}\n\nFind the answer in this text:\n{context}",
    "{context}\n\nFrom the passage above, what is the answer to \"{question}\"?",
    _inverse("{context}\n\nWrite a question about this passage whose answer is "
             "\"{answer}\".", "{question}"),
    _inverse("Write a question that can be answered from this text.\n\n{context}",
             "{question}"),
)

UNANSWERABLE = " (If the passage does not answer it, reply \"unanswerable\".)"
EXTRACTIVE_QA_V2 = tuple(
    t if t.inverse else Template(inputs=t.inputs + UNANSWERABLE) for t in EXTRACTIVE_QA
)

BOOLQ = _choose(  # title, text, question
    "{text}\n\nAccording to the passage, {question}",
    "Title: {title}\n\n{text}\n\nQuestion: {question}",
    "Read the passage and answer yes or no.\n\n{text}\n\n{question}",
    "Passage about {title}:\n{text}\n\nAnswer this question: {question}",
    "{question}\n\nUse this text to answer: {text}",
    "Here is an article.\n\n{text}\n\nBased on it, {question}",
    "Given the text below, {question}\n\n{text}",
    "Text: {text}\nQuestion: {question}\nYes or no?",
    "Answer the yes/no question about {title}.\n\n{text}\n\n{question}",
    _inverse("{text}\n\nWrite a yes-or-no question about the passage whose answer is "
             "\"{answer}\".", "{question}"),
)

MULTIRC = _choose(  # paragraph, question, response
    "{paragraph}\n\nQuestion: {question}\nResponse: {response}\n\nIs the response correct?",
    "Is the proposed answer right?\n\n{paragraph}\n\n{question}\nProposed answer: {response}",
    "{paragraph}\n\nBased on this, does \"{response}\" correctly answer \"{question}\"?",
    "Paragraph: {paragraph}\n\nSomeone answered the question \"{question}\" with "
    "\"{response}\". Were they right?",
    "{paragraph}\n\n{question}\n\nWould it be correct to answer \"{response}\"?",
    "Check the answer.\nText: {paragraph}\nQuestion: {question}\nAnswer: {response}",
    "{paragraph}\n\nIs \"{response}\" a correct answer to \"{question}\"?",
    "Question: {question}\nCandidate answer: {response}\n\nSupporting text: {paragraph}\n\n"
    "Is the candidate answer valid?",
    "Does the passage support the answer?\n\n{paragraph}\n\nQ: {question}\nA: {response}",
    _inverse("{paragraph}\n\nWrite a question about the paragraph above for which "
             "\"{response}\" is a candidate answer.", "{question}"),
)

RECORD = _choose(  # passage, query (the start of a sentence the options complete)
    "{passage}\n\nHow does the next sentence continue?\n\n{query}",
    "Read the news article and complete the final sentence.\n\n{passage}\n\n{query}",
    "{passage}\n\nWhich option correctly finishes this sentence: {query}",
    "Article: {passage}\n\nFill in the rest: {query}",
    "{passage}\n\nBased on the article, what comes next?\n{query}",
    "Complete the text using the article.\n\nArticle:\n{passage}\n\nText to complete:\n{query}",
    "{passage}\n\nChoose the right ending for: \"{query}\"",
    "Here is a story: {passage}\n\nContinue this sentence correctly: {query}",
    "{passage}\n\nUsing the information above, finish the statement.\n{query}",
    _inverse("Write a news article that a reader could follow with this sentence: {query} "
             "{answer}", "{passage}"),
)

# -------------------------------------------------------------------- commonsense, coreference
CONTINUATION = _choose(  # context; options are endings
    "{context}\n\nWhat is the most likely continuation?",
    "Finish the following text.\n\n{context}",
    "How does this end?\n\n{context}",
    "{context}\n\nWhich of the following comes next?",
    "Choose the most sensible ending for: {context}",
    "Complete the passage with the best option.\n\n{context}",
    "{context}\n\nPick the most plausible next part.",
    "Read the start of the text and select how it continues.\n\n{context}",
    "What follows naturally after this?\n{context}",
    _inverse("Write the beginning of a text that ends with: {answer}", "{context}"),
)

PHYSICAL_GOAL = _choose(  # goal; options are solutions
    "Goal: {goal}\n\nWhich way of doing it is better?",
    "How would you accomplish this: {goal}",
    "{goal}\n\nPick the more sensible solution.",
    "Choose the method that achieves the goal.\nGoal: {goal}",
    "What is the right way to do the following? {goal}",
    "Task: {goal}\nWhich approach works?",
    "Here is a goal: {goal}\n\nWhich solution makes more physical sense?",
    "{goal}\n\nWhat should one do?",
    "Using common sense, pick the better way to reach this goal: {goal}",
    _inverse("Describe a goal that can be achieved like this: {answer}", "{goal}"),
)

CAUSE_EFFECT = _choose(  # premise, question ("cause" or "effect")
    "{premise}\n\nWhat was the {question} of this?",
    "Premise: {premise}\nWhat is the more plausible {question}?",
    "Pick the more likely {question}.\n\n{premise}",
    "{premise} Which of the following is the {question}?",
    "Consider this event: {premise}\n\nChoose the better {question} for it.",
    "Event: {premise}\nFind its most plausible {question}.",
    "Here is a situation: {premise}\n\nWhat is its {question}?",
    "Using common sense, select the {question} of the following.\n{premise}",
    "{premise}\n\nQuestion: what is the {question}?",
    _inverse("Write a sentence describing an event whose {question} is: {answer}",
             "{premise}"),
)

PRONOUN = _choose(  # sentence, pronoun; options are candidate referents
    "{sentence}\n\nWho or what does \"{pronoun}\" refer to in the sentence above?",
    "In the sentence \"{sentence}\", what is \"{pronoun}\" referring to?",
    "Resolve the pronoun.\nSentence: {sentence}\nPronoun: {pronoun}",
    "{sentence}\n\nWhich entity does the word \"{pronoun}\" stand for?",
    "Read this sentence: {sentence}\n\nWhat is the antecedent of \"{pronoun}\"?",
    "Whom or what does \"{pronoun}\" mean here? {sentence}",
    "Sentence: {sentence}\n\nIn this sentence, \"{pronoun}\" refers to which option?",
    "Find what the pronoun \"{pronoun}\" points to in: {sentence}",
    "{sentence}\nWho or what is \"{pronoun}\"?",
    _inverse("Write a sentence in which the pronoun \"{pronoun}\" refers to {answer}.",
             "{sentence}"),
)

# Whether one span refers to the other; no inverse: the spans come from the text itself.
SAME_REFERENT = _choose(  # context, text1, text2
    "{context}\n\nIn the passage above, does \"{text2}\" refer to \"{text1}\"?",
    "{context}\n\nIs \"{text2}\" the same as \"{text1}\" here?",
    "{context}\n\nQuestion: is \"{text2}\" referring to {text1}?",
    "Sentence: {context}\n\nDoes \"{text2}\" stand for \"{text1}\"?",
    "In \"{context}\", is \"{text2}\" another way of naming \"{text1}\"?",
    "In the text below, do \"{text1}\" and \"{text2}\" name the same thing?\n\n{context}",
    "{context}\n\nHere, \"{text2}\" means \"{text1}\". True?",
    "Consider this text: {context}\n\nCan \"{text2}\" be replaced by \"{text1}\" without "
    "changing the meaning?",
    "{context}\n\nDoes the word \"{text2}\" point to \"{text1}\"?",
    "Pronoun resolution.\nText: {context}\nIs \"{text2}\" about \"{text1}\"?",
)

# -------------------------------------------------------------------------- structure to text
CONCEPTS = _write(  # concepts
    "Write a sentence that uses all of these words: {concepts}.",
    "Concepts: {concepts}\n\nMake a sentence containing every concept above.",
    "Create one sentence about everyday life with these words: {concepts}",
    "Use the words {concepts} in a single sentence.",
    "Here are some words: {concepts}. Combine them into a sentence.",
    "Generate a sentence that mentions {concepts}.",
    "Write something that includes the following: {concepts}",
    "Put these concepts together in a natural sentence: {concepts}",
    "Words: {concepts}\nSentence:",
    _inverse("List the key concepts of this sentence: {answer}", "{concepts}"),
)

DATA_TO_TEXT = _write(  # data
    "Write a sentence that states all of this data: {data}",
    "Data: {data}\n\nDescribe this data in one or two sentences.",
    "Turn these facts into natural text.\n\n{data}",
    "{data}\n\nExpress the information above in plain English.",
    "Generate a description from the following structured data: {data}",
    "Here are some facts: {data}\n\nWrite them as a sentence.",
    "Verbalize this: {data}",
    "Convert the data into text.\n{data}",
    _inverse("Extract the facts in this sentence as structured data: {answer}", "{data}"),
    _inverse("Sentence: {answer}\n\nWhat structured data does this sentence express?",
             "{data}"),
)

# ----------------------------------------------------------------------------------- translation
TRANSLATION = _write(  # source, source_language, target_language
    "Translate to {target_language}:\n\n{source}",
    "{source}\n\nTranslate this into {target_language}.",
    "How do you say this in {target_language}?\n\n{source}",
    "Translate the following {source_language} text into {target_language}.\n\n{source}",
    "{source_language}: {source}\n{target_language}:",
    "Give the {target_language} version of this {source_language} sentence: {source}",
    "Render in {target_language}: {source}",
    "{source}\n\nWhat does this mean in {target_language}?",
    _inverse("Translate to {source_language}:\n\n{answer}", "{source}"),
    _inverse("Translate the following {target_language} text into {source_language}.\n\n"
             "{answer}", "{source}"),
)

# --------------------------------------------------------------------------------- summarization
SUMMARY = _write(  # text
    "{text}\n\nSummarize the text above.",
    "Write a summary of this text.\n\n{text}",
    "Summarize:\n\n{text}",
    "{text}\n\nWhat are the main points of this text?",
    "Give a brief summary of the following.\n\n{text}",
    "Text: {text}\n\nSummary:",
    "Condense this into a few sentences.\n\n{text}",
    "In short, what is this about?\n\n{text}",
    _inverse("Write a text based on this summary: {answer}", "{text}"),
    _inverse("Summary: {answer}\n\nWrite the full text that this summary describes.", "{text}"),
)

TITLE = _write(  # text
    "Write a short title for this text.\n\n{text}",
    "{text}\n\nGive this a headline.",
    "What is a good title for the following?\n\n{text}",
    "Text: {text}\nTitle:",
    "Sum up this text in a few words.\n\n{text}",
    "{text}\n\nWrite a one-line summary of the text above.",
    "Create a subject line for: {text}",
    "Suggest a brief heading for this: {text}",
    _inverse("Write a text with the title \"{answer}\".", "{text}"),
    _inverse("Title: {answer}\n\nWrite the text that goes with this title.", "{text}"),
)

NEWS_TOPIC = _choose(  # title, text
    "{title}\n\n{text}\n\nWhat is this news article about?",
    "Classify the topic of this article.\n\nTitle: {title}\n{text}",
    "{text}\n\nWhich section of a newspaper would this appear in?",
    "Headline: {title}\n\nWhat category does this story belong to?",
    "Choose the topic: {title} - {text}",
    "Article: {text}\n\nWhat is its subject?",
    "{title}: {text}\n\nIs this about world news, sports, business, or science and "
    "technology?",
    "Read the news and select its topic.\n{title}\n{text}",
    _inverse("Write a headline for a news story in the category \"{answer}\".", "{title}"),
    _inverse("Write a short news article in the category \"{answer}\" titled \"{title}\".",
             "{text}"),
)

# ------------------------------------------------------------------------------------------ misc
ACCEPTABILITY = _choose(  # sentence
    "Is the following sentence grammatically acceptable?\n\n{sentence}",
    "{sentence}\n\nWould a linguist judge this sentence acceptable?",
    "Sentence: {sentence}\n\nIs this sentence well formed?",
    "Check the grammar of this sentence: {sentence}",
    "{sentence}\n\nHow would you rate the grammaticality of the sentence above?",
    "Does \"{sentence}\" sound like correct English?",
    "Judge whether this is a grammatical English sentence.\n{sentence}",
    "Here is a sentence: {sentence}\nIs it acceptable?",
    "Decide if the sentence below is grammatically correct.\n\n{sentence}",
    _inverse("Write a sentence that a linguist would judge grammatically {answer}.",
             "{sentence}"),
)

QUESTION_TYPE = _choose(  # text
    "What type of thing is the following question asking about?\n\n{text}",
    "{text}\n\nWhat kind of answer does this question need?",
    "Classify the question by the type of its answer.\n\n{text}",
    "Question: {text}\n\nIs it asking for a description, entity, abbreviation, person, "
    "number, or location?",
    "What kind of thing would answer \"{text}\"?",
    "{text}\n\nWhich category best describes the expected answer?",
    "Determine the answer type of this question: {text}",
    "Here is a question: {text}\nWhat is its answer type?",
    "What sort of information is being requested here? {text}",
    _inverse("Write a question whose answer is of the type \"{answer}\".", "{text}"),
)

WORD_SENSE = _choose(  # word, sentence1, sentence2
    "A: {sentence1}\nB: {sentence2}\n\nDoes \"{word}\" mean the same in A and B?",
    "{sentence1}\n{sentence2}\n\nCompare the meaning of \"{word}\" in the two sentences above.",
    "In \"{sentence1}\" and \"{sentence2}\", is \"{word}\" used in one sense or two?",
    "Word: {word}\nFirst use: {sentence1}\nSecond use: {sentence2}\n\nHow do the senses relate?",
    "How is \"{word}\" used here?\n1. {sentence1}\n2. {sentence2}",
    "Does \"{word}\" mean the same thing in both?\n\n{sentence1}\n\n{sentence2}",
    "{sentence1}\n\n{sentence2}\n\nThe word \"{word}\" appears in both. Which is true?",
    "Two uses of \"{word}\":\n{sentence1}\n{sentence2}\nDoes it keep its meaning?",
    "Is the sense of \"{word}\" the same in both of these?\n{sentence1}\n{sentence2}",
    _inverse("Sentence: {sentence1}\n\nWrite another sentence using \"{word}\" so that the two "
             "uses have {answer}.", "{sentence2}"),
)

MATH = _write(  # question
    "Solve this problem: {question}",
    "Math problem: {question}\nSolution:",
    "What is the solution?\n\n{question}",
    "{question}\n\nWhat is the answer?",
    "Work out the answer: {question}",
    "Compute the following. {question}",
    "Give the answer to this math question: {question}",
    "Question: {question}\nAnswer:",
    "Find the value asked for: {question}",
    _inverse("Write a linear equation problem whose solution is {answer}.", "{question}"),
)
